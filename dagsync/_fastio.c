/* dagsync._fastio: the receiver's per-file syscalls for a whole chunk in one call, with
 * the GIL released for the loop; and the sender's reads of a whole batch the same way.
 *
 * Why: an initial sync writes thousands of small files. In Python each file costs about
 * seven syscalls, and every one of them gives the GIL away and must win it back from
 * the event loop, which is busy decoding the next chunk (docs/initial-sync.md). Here a
 * chunk of 512 files takes the GIL once. The semantics are those of the Python loops in
 * dagsync/bulkio.py (stage_files_py, place_files_py, read_files_py), which stay as the
 * fallback and the reference tests/test_bulkio.py holds this module to.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- one batch: parse every item with the GIL, run them all without it, report ------ */

typedef struct {
    size_t size;                              /* of one item */
    int (*parse)(PyObject *tuple, void *item); /* 0, or -1 with an exception set */
    void (*run)(void *item);                  /* the syscalls: no Python here */
    PyObject *(*result)(void *item);          /* a new reference, or NULL */
    void (*release)(void *item);              /* what parse took (also after a failed parse) */
    int (*group)(const void *item);           /* items of one group (a directory) stay in
                                                 one thread; NULL: never split */
} batch_ops;

/* A batch split over threads: each runs a contiguous range of the items. */
#define MAX_THREADS 4
#define MIN_PER_THREAD 32

typedef struct {
    const batch_ops *ops;
    char *items;
    Py_ssize_t start, end;
} batch_range;

static void *run_range(void *p) {
    batch_range *r = p;
    for (Py_ssize_t i = r->start; i < r->end; i++) r->ops->run(r->items + i * r->ops->size);
    return NULL;
}

/* Where the range ending near `at` should end: at a change of group within a quarter of
 * a share either way, so that two threads rarely create in one directory (whose lock
 * would make them take turns). */
static Py_ssize_t split_point(const batch_ops *ops, char *items, Py_ssize_t at,
                              Py_ssize_t share, Py_ssize_t lo, Py_ssize_t hi) {
    Py_ssize_t reach = share / 4;
    for (Py_ssize_t d = 0; d <= reach; d++) {
        Py_ssize_t j = at + d;
        if (j > lo && j < hi &&
            ops->group(items + (j - 1) * ops->size) != ops->group(items + j * ops->size))
            return j;
        j = at - d;
        if (j > lo && j < hi &&
            ops->group(items + (j - 1) * ops->size) != ops->group(items + j * ops->size))
            return j;
    }
    return at;
}

/* Run every item, over up to `threads` threads (the calling one included). */
static void run_items(const batch_ops *ops, char *items, Py_ssize_t n, int threads) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (!ops->group || threads < 2 || n < 2 * MIN_PER_THREAD) {
        batch_range all = {ops, items, 0, n};
        run_range(&all);
        return;
    }
    if (n / threads < MIN_PER_THREAD) threads = (int)(n / MIN_PER_THREAD);
    batch_range ranges[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    Py_ssize_t share = n / threads, start = 0;
    for (int t = 0; t < threads; t++) {
        Py_ssize_t end = t == threads - 1 ? n
                         : split_point(ops, items, start + share, share, start, n);
        ranges[t] = (batch_range){ops, items, start, end};
        start = end;
    }
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, run_range, &ranges[t]) == 0;
    run_range(&ranges[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(tids[t], NULL);
        else run_range(&ranges[t]); /* no thread to be had: this one runs it too */
    }
}

static PyObject *run_batch(PyObject *args, const char *format, const batch_ops *ops) {
    PyObject *items_in;
    int threads = 1; /* filled by a format with "|i" (stage_files'), else left at 1 */
    if (!PyArg_ParseTuple(args, format, &items_in, &threads)) return NULL;
    PyObject *seq = PySequence_Fast(items_in, "items must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i, parsed = 0;
    char *items = PyMem_Calloc(n ? (size_t)n : 1, ops->size);
    PyObject *result = NULL;
    if (!items) {
        PyErr_NoMemory();
        goto done;
    }
    while (parsed < n) {
        void *item = items + parsed * ops->size;
        parsed++; /* released below even if its parse fails half-way */
        if (ops->parse(PySequence_Fast_GET_ITEM(seq, parsed - 1), item) < 0) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    run_items(ops, items, n, threads);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (i = 0; result && i < n; i++) {
        PyObject *r = ops->result(items + i * ops->size);
        if (!r) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, r);
    }
done:
    if (items) {
        for (i = 0; i < parsed; i++) ops->release(items + i * ops->size);
        PyMem_Free(items);
    }
    Py_DECREF(seq);
    return result;
}

static int flag(PyObject *obj, int *out) {
    *out = PyObject_IsTrue(obj);
    return *out < 0 ? -1 : 0;
}

/* --- stage_files ---------------------------------------------------------------------- */

typedef struct {
    int dir_fd;
    PyObject *name; /* bytes, file-system encoded */
    Py_buffer data;
    int has_data;
    mode_t perm;
    int chmod;
    long long mtime_ns;
    int err; /* results */
    long long st_mtime_ns;
    unsigned long long st_ino;
} stage_item;

static int stage_parse(PyObject *tuple, void *p) {
    stage_item *it = p;
    PyObject *name, *data, *chmod, *mtime;
    long perm;
    if (!PyArg_ParseTuple(tuple, "iOOlOO:stage item", &it->dir_fd, &name, &data, &perm,
                          &chmod, &mtime))
        return -1;
    if (!PyUnicode_FSConverter(name, &it->name)) return -1;
    if (PyObject_GetBuffer(data, &it->data, PyBUF_SIMPLE) != 0) return -1;
    it->has_data = 1;
    it->perm = (mode_t)(perm & 07777);
    if (flag(chmod, &it->chmod) < 0) return -1;
    it->mtime_ns = PyLong_AsLongLong(mtime);
    return it->mtime_ns == -1 && PyErr_Occurred() ? -1 : 0;
}

static int write_all(int fd, const char *p, Py_ssize_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, (size_t)n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += w;
        n -= w;
    }
    return 0;
}

static void stage_run(void *p) {
    stage_item *it = p;
    const char *name = PyBytes_AS_STRING(it->name);
    int fd = openat(it->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    it->chmod ? 0600 : it->perm);
    if (fd < 0) {
        it->err = errno;
        return;
    }
    int err = write_all(fd, (const char *)it->data.buf, it->data.len);
    if (!err && it->chmod && fchmod(fd, it->perm) != 0) err = errno;
    if (!err) {
        /* floor division, as os.utime splits a negative (pre-1970) time */
        long long sec = it->mtime_ns / 1000000000LL, nsec = it->mtime_ns % 1000000000LL;
        if (nsec < 0) {
            sec -= 1;
            nsec += 1000000000LL;
        }
        struct timespec ts[2] = {{(time_t)sec, (long)nsec}, {(time_t)sec, (long)nsec}};
        if (futimens(fd, ts) != 0) err = errno;
    }
    struct stat st;
    if (!err && fstat(fd, &st) != 0) err = errno;
    if (close(fd) != 0 && !err && errno != EINTR) err = errno;
    if (err) {
        unlinkat(it->dir_fd, name, 0);
        it->err = err;
        return;
    }
    it->st_mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    it->st_ino = (unsigned long long)st.st_ino;
}

static PyObject *stage_result(void *p) {
    stage_item *it = p;
    return it->err ? PyLong_FromLong(it->err)
                   : Py_BuildValue("(LK)", it->st_mtime_ns, it->st_ino);
}

static void stage_release(void *p) {
    stage_item *it = p;
    Py_XDECREF(it->name);
    if (it->has_data) PyBuffer_Release(&it->data);
}

static int stage_group(const void *p) { return ((const stage_item *)p)->dir_fd; }

static const batch_ops stage_ops = {sizeof(stage_item), stage_parse, stage_run, stage_result,
                                    stage_release, stage_group};

PyDoc_STRVAR(stage_files_doc,
"stage_files(items, threads=1) -> list\n\n"
"items: (dir_fd: int, temp_name: str, data: bytes-like, perm: int, chmod: bool,\n"
"mtime_ns: int). Each is created O_EXCL|O_NOFOLLOW in dir_fd with `perm` (0600 when\n"
"`chmod`, then fchmod-ed to `perm` once written), given mtime_ns, fstat-ed and\n"
"closed; a failed one is unlinked. Returns per item (st_mtime_ns, st_ino), or the\n"
"errno (an int) of its first failure. With `threads` > 1 (4 at most, 32 items each at\n"
"least), contiguous runs of the items, cut where dir_fd changes when one is near, are\n"
"written by as many threads at once: the results are the same.");

static PyObject *stage_files(PyObject *self, PyObject *args) {
    (void)self;
    return run_batch(args, "O|i:stage_files", &stage_ops);
}

/* --- place_files ---------------------------------------------------------------------- */

typedef struct {
    int src_fd;
    PyObject *tmp;
    int dst_fd;
    PyObject *name;
    int link_first;
    int err;
} place_item;

static int place_parse(PyObject *tuple, void *p) {
    place_item *it = p;
    PyObject *tmp, *name, *link_first;
    if (!PyArg_ParseTuple(tuple, "iOiOO:place item", &it->src_fd, &tmp, &it->dst_fd, &name,
                          &link_first))
        return -1;
    if (!PyUnicode_FSConverter(tmp, &it->tmp)) return -1;
    if (!PyUnicode_FSConverter(name, &it->name)) return -1;
    return flag(link_first, &it->link_first);
}

static void place_run(void *p) {
    place_item *it = p;
    const char *tmp = PyBytes_AS_STRING(it->tmp), *name = PyBytes_AS_STRING(it->name);
    if (it->link_first && linkat(it->src_fd, tmp, it->dst_fd, name, 0) == 0) {
        unlinkat(it->src_fd, tmp, 0);
        return;
    }
    if (renameat(it->src_fd, tmp, it->dst_fd, name) != 0) it->err = errno;
}

static PyObject *place_result(void *p) { return PyLong_FromLong(((place_item *)p)->err); }

static void place_release(void *p) {
    place_item *it = p;
    Py_XDECREF(it->tmp);
    Py_XDECREF(it->name);
}

static const batch_ops place_ops = {sizeof(place_item), place_parse, place_run, place_result,
                                    place_release};

PyDoc_STRVAR(place_files_doc,
"place_files(items) -> list\n\n"
"items: (src_fd: int, temp_name: str, dst_fd: int, name: str, link_first: bool).\n"
"With link_first the temp is hard-linked to dst_fd/name and unlinked, and renamed\n"
"over it if the link fails; without, it is renamed. Returns per item 0 or the errno\n"
"of the rename.");

static PyObject *place_files(PyObject *self, PyObject *args) {
    (void)self;
    return run_batch(args, "O:place_files", &place_ops);
}

/* --- read_files ----------------------------------------------------------------------- */

#define READ_NOT_REGULAR (-1)
#define READ_OVER_BUDGET (-2)

typedef struct {
    int dir_fd;
    PyObject *name; /* bytes, file-system encoded */
    int fd;
    int err; /* errno, or READ_NOT_REGULAR / READ_OVER_BUDGET */
    char *buf;
    Py_ssize_t len;
} read_item;

/* The content of the regular file on it->fd, up to `limit` bytes; 0 or an error code. */
static int read_content(read_item *it, Py_ssize_t limit) {
    struct stat st;
    if (fstat(it->fd, &st) != 0) return errno;
    if (!S_ISREG(st.st_mode)) return READ_NOT_REGULAR;
    Py_ssize_t cap = st.st_size + 4096 < limit ? (Py_ssize_t)st.st_size + 4096 : limit;
    it->buf = malloc(cap > 0 ? (size_t)cap : 1);
    if (!it->buf) return ENOMEM;
    while (it->len < limit) {
        if (it->len == cap) { /* grew since fstat */
            cap = cap * 2 < limit ? cap * 2 : limit;
            char *bigger = realloc(it->buf, (size_t)cap);
            if (!bigger) return ENOMEM;
            it->buf = bigger;
        }
        ssize_t n = pread(it->fd, it->buf + it->len, (size_t)(cap - it->len), (off_t)it->len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) break;
        it->len += n;
    }
    return 0;
}

static void read_run(read_item *items, Py_ssize_t n, Py_ssize_t budget, Py_ssize_t ahead,
                     Py_ssize_t window) {
    Py_ssize_t left = budget, w, i;
    for (w = 0; w < n; w += window) {
        Py_ssize_t end = w + window < n ? w + window : n;
        off_t first = (off_t)(ahead < left ? ahead : left);
        for (i = w; i < end; i++) {
            read_item *it = &items[i];
            it->fd = openat(it->dir_fd, PyBytes_AS_STRING(it->name),
                            O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
            if (it->fd < 0) it->err = errno;
            else if (first > 0) /* a hint: its failure is no error (0 would mean "all") */
                posix_fadvise(it->fd, 0, first, POSIX_FADV_WILLNEED);
        }
        for (i = w; i < end; i++) {
            read_item *it = &items[i];
            if (it->fd < 0) continue;
            it->err = read_content(it, left);
            close(it->fd);
            it->fd = -1;
            if (!it->err && it->len >= left) it->err = READ_OVER_BUDGET;
            if (it->err) {
                free(it->buf);
                it->buf = NULL;
                it->len = 0;
            } else {
                left -= it->len;
            }
        }
    }
}

PyDoc_STRVAR(read_files_doc,
"read_files(items, budget, ahead, window) -> list\n\n"
"items: (dir_fd: int, name: str). A window of files at a time: each opened\n"
"O_NOFOLLOW|O_NONBLOCK in dir_fd and read ahead (its first min(ahead, budget left)\n"
"bytes), then each read whole (a regular file only) and closed. The files share\n"
"`budget` bytes in order: one that reaches what is left of it is not returned and\n"
"takes nothing from it. Returns per item its bytes, or an int: the errno of its\n"
"failure, -1 for a file that is not a regular one, -2 for one over the budget.");

static PyObject *read_files(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *items_in, *result = NULL;
    Py_ssize_t budget, ahead, window, n, i, parsed = 0;
    if (!PyArg_ParseTuple(args, "Onnn:read_files", &items_in, &budget, &ahead, &window))
        return NULL;
    if (budget < 1 || ahead < 0 || window < 1) {
        PyErr_SetString(PyExc_ValueError, "read_files: budget and window must be positive");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(items_in, "items must be a sequence");
    if (!seq) return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    read_item *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(read_item));
    if (!items) {
        PyErr_NoMemory();
        goto done;
    }
    for (; parsed < n; parsed++) {
        read_item *it = &items[parsed];
        PyObject *name;
        it->fd = -1;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, parsed), "iO:read item",
                              &it->dir_fd, &name) ||
            !PyUnicode_FSConverter(name, &it->name)) {
            parsed++; /* its name, if converted, is released below */
            goto done;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    read_run(items, n, budget, ahead, window);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (i = 0; result && i < n; i++) {
        read_item *it = &items[i];
        PyObject *r = it->err ? PyLong_FromLong(it->err)
                              : PyBytes_FromStringAndSize(it->buf ? it->buf : "", it->len);
        if (!r) Py_CLEAR(result);
        else PyList_SET_ITEM(result, i, r);
    }
done:
    if (items) {
        for (i = 0; i < parsed; i++) {
            Py_XDECREF(items[i].name);
            free(items[i].buf);
        }
        PyMem_Free(items);
    }
    Py_DECREF(seq);
    return result;
}

/* --- the module ----------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"stage_files", stage_files, METH_VARARGS, stage_files_doc},
    {"place_files", place_files, METH_VARARGS, place_files_doc},
    {"read_files", read_files, METH_VARARGS, read_files_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dagsync._fastio",
    .m_doc = "A chunk's file writes and renames, a batch's reads, in one call each, "
             "without the GIL (bulkio.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fastio(void) { return PyModule_Create(&module); }
