/* dagsync._fastio: the receiver's per-file syscalls for a whole chunk in one call, with
 * the GIL released for the loop.
 *
 * Why: an initial sync writes thousands of small files. In Python each file costs six
 * syscalls, and every one of them gives the GIL away and must win it back from the
 * event loop, which is busy decoding the next chunk (docs/initial-sync.md). Here a chunk
 * of 512 files takes the GIL once. The semantics are those of dagsync/fsio.py's Python
 * loops (_stage_batch_py, _place_batch_py), which stay as the fallback and the reference
 * the tests compare this module against.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int dir_fd;
    PyObject *name;  /* bytes, file-system encoded */
    Py_buffer data;
    int has_data;
    mode_t perm;
    int chmod;
    long long mtime_ns;
    /* results */
    int err;
    long long st_mtime_ns;
    unsigned long long st_ino;
} stage_item;

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

static void stage_one(stage_item *it) {
    int dir_fd = it->dir_fd;
    const char *name = PyBytes_AS_STRING(it->name);
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    it->chmod ? 0600 : it->perm);
    if (fd < 0) {
        it->err = errno;
        return;
    }
    int err = write_all(fd, (const char *)it->data.buf, it->data.len);
    if (!err && it->chmod && fchmod(fd, it->perm) != 0) err = errno;
    if (!err) {
        struct timespec ts[2];
        ts[0].tv_sec = ts[1].tv_sec = (time_t)(it->mtime_ns / 1000000000LL);
        ts[0].tv_nsec = ts[1].tv_nsec = (long)(it->mtime_ns % 1000000000LL);
        if (ts[0].tv_nsec < 0) { /* before 1970: floor division, as os.utime does */
            ts[0].tv_sec -= 1;
            ts[1].tv_sec -= 1;
            ts[0].tv_nsec += 1000000000L;
            ts[1].tv_nsec += 1000000000L;
        }
        if (futimens(fd, ts) != 0) err = errno;
    }
    if (!err) {
        struct stat st;
        if (fstat(fd, &st) != 0) {
            err = errno;
        } else {
            it->st_mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
            it->st_ino = (unsigned long long)st.st_ino;
        }
    }
    if (close(fd) != 0 && !err && errno != EINTR) err = errno;
    if (err) {
        unlinkat(dir_fd, name, 0);
        it->err = err;
    }
}

PyDoc_STRVAR(stage_files_doc,
"stage_files(items) -> list\n\n"
"items: (dir_fd: int, temp_name: str, data: bytes-like, perm: int, chmod: bool,\n"
"mtime_ns: int). Each is created O_EXCL|O_NOFOLLOW in dir_fd with `perm` (0600 when\n"
"`chmod`, then fchmod-ed to `perm` once written), given mtime_ns, fstat-ed and\n"
"closed; a failed one is unlinked. Returns per\n"
"item (st_mtime_ns, st_ino), or the errno (an int) of its first failure.");

static PyObject *stage_files(PyObject *self, PyObject *args) {
    PyObject *items_in;
    if (!PyArg_ParseTuple(args, "O:stage_files", &items_in)) return NULL;
    PyObject *seq = PySequence_Fast(items_in, "items must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    stage_item *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(stage_item));
    PyObject *result = NULL;
    Py_ssize_t i, ready = 0;
    if (!items) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++, ready++) {
        PyObject *name_obj, *data_obj, *perm_obj, *chmod_obj, *mtime_obj;
        stage_item *it = &items[i];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iOOOOO:stage item",
                              &it->dir_fd, &name_obj, &data_obj, &perm_obj, &chmod_obj, &mtime_obj))
            goto done;
        if (!PyUnicode_FSConverter(name_obj, &it->name)) goto done;
        if (PyObject_GetBuffer(data_obj, &it->data, PyBUF_SIMPLE) != 0) goto done;
        it->has_data = 1;
        long perm = PyLong_AsLong(perm_obj);
        if (perm == -1 && PyErr_Occurred()) goto done;
        it->perm = (mode_t)(perm & 07777);
        it->chmod = PyObject_IsTrue(chmod_obj);
        if (it->chmod < 0) goto done;
        it->mtime_ns = PyLong_AsLongLong(mtime_obj);
        if (it->mtime_ns == -1 && PyErr_Occurred()) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n; i++) stage_one(&items[i]);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (!result) goto done;
    for (i = 0; i < n; i++) {
        PyObject *r = items[i].err
            ? PyLong_FromLong(items[i].err)
            : Py_BuildValue("(LK)", items[i].st_mtime_ns, items[i].st_ino);
        if (!r) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, r);
    }
done:
    if (items) {
        for (i = 0; i <= ready && i < n; i++) {
            Py_XDECREF(items[i].name);
            if (items[i].has_data) PyBuffer_Release(&items[i].data);
        }
        PyMem_Free(items);
    }
    Py_DECREF(seq);
    return result;
}

typedef struct {
    int src_fd;
    PyObject *tmp;
    PyObject *name;
    int dst_fd;
    int link_first;
    int err;
} place_item;

PyDoc_STRVAR(place_files_doc,
"place_files(items) -> list\n\n"
"items: (src_fd: int, temp_name: str, dst_fd: int, name: str, link_first: bool). With link_first\n"
"the temp is hard-linked to dst_fd/name and unlinked, and renamed over it if the link\n"
"fails; without, it is renamed. Returns per item 0 or the errno of the rename.");

static PyObject *place_files(PyObject *self, PyObject *args) {
    PyObject *items_in;
    if (!PyArg_ParseTuple(args, "O:place_files", &items_in)) return NULL;
    PyObject *seq = PySequence_Fast(items_in, "items must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    place_item *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(place_item));
    PyObject *result = NULL;
    Py_ssize_t i, ready = 0;
    if (!items) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++, ready++) {
        PyObject *tmp_obj, *name_obj, *link_obj;
        place_item *it = &items[i];
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iOiOO:place item",
                              &it->src_fd, &tmp_obj, &it->dst_fd, &name_obj, &link_obj))
            goto done;
        if (!PyUnicode_FSConverter(tmp_obj, &it->tmp)) goto done;
        if (!PyUnicode_FSConverter(name_obj, &it->name)) goto done;
        it->link_first = PyObject_IsTrue(link_obj);
        if (it->link_first < 0) goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < n; i++) {
        place_item *it = &items[i];
        const char *tmp = PyBytes_AS_STRING(it->tmp);
        const char *name = PyBytes_AS_STRING(it->name);
        if (it->link_first && linkat(it->src_fd, tmp, it->dst_fd, name, 0) == 0) {
            unlinkat(it->src_fd, tmp, 0);
            continue;
        }
        if (renameat(it->src_fd, tmp, it->dst_fd, name) != 0) it->err = errno;
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (!result) goto done;
    for (i = 0; i < n; i++) {
        PyObject *r = PyLong_FromLong(items[i].err);
        if (!r) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, r);
    }
done:
    if (items) {
        for (i = 0; i <= ready && i < n; i++) {
            Py_XDECREF(items[i].tmp);
            Py_XDECREF(items[i].name);
        }
        PyMem_Free(items);
    }
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"stage_files", stage_files, METH_VARARGS, stage_files_doc},
    {"place_files", place_files, METH_VARARGS, place_files_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dagsync._fastio",
    "A chunk's file writes and renames in one call, without the GIL (see fsio.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__fastio(void) { return PyModule_Create(&module); }
