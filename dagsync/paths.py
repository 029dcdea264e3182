"""Path confinement rules (SPEC guarantee 8) as pure checks: no I/O, standard library only.

A peer names files by folder-relative POSIX paths. Everything here decides, from the
text alone, whether such a path (or a symlink's target) may be acted on; fsio.py then
enforces at the file system that no symlinked parent redirects the act.
"""

from __future__ import annotations

from dagsync.errors import PathRefused

TEMP_PREFIX = ".~dagsync."  # temp files dagsync writes inside a synced folder
TEMP_SUFFIX = ".tmp"  # never ".py" or ".zip": Airflow must not parse a half-written file
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

_REPR_LIMIT = 120


def is_temp_name(name: str) -> bool:
    """True for a basename dagsync itself wrote (and may delete after a crash)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temp_name(final_name: str, token: str) -> str:
    """The temp basename for writing `final_name`: `.~dagsync.<token>.tmp`, <= 255 bytes.

    The final name is deliberately not embedded: its ending (".py", ".zip") must never
    appear on a file that is not yet whole, and a long final name must not push the
    temp name over the limit. `token` should be random so concurrent writers never meet.
    """
    del final_name  # part of the signature so callers say what the temp is for
    if not token or "/" in token or "\0" in token:
        raise ValueError(f"bad temp token {token!r}")
    room = MAX_NAME_BYTES - len(TEMP_PREFIX.encode()) - len(TEMP_SUFFIX.encode())
    token = token.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    return f"{TEMP_PREFIX}{token}{TEMP_SUFFIX}"


def _short_repr(path: object) -> str:
    r = repr(path)
    return r if len(r) <= _REPR_LIMIT else r[: _REPR_LIMIT - 3] + "..."


def _refuse(path: object, reason: str) -> PathRefused:
    return PathRefused(f"refused path {_short_repr(path)}: {reason}")


def check_relpath(path: str) -> str:
    """Return `path` unchanged if a peer may name it; raise PathRefused saying why not.

    Accepted: a non-empty relative POSIX path of plain components, each a valid UTF-8
    name within the byte limits, free of control characters and backslashes, and none
    of them in dagsync's own temp-name namespace. There is exactly one spelling for each
    file: no "", "." or ".." components, so no "a//b", "./a" or trailing "/".
    """
    if not isinstance(path, str):
        raise _refuse(path, "not a string")
    if not path:
        raise _refuse(path, "empty path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(path, "not valid UTF-8") from None
    ascii_printable = path.isascii() and path.isprintable()  # the usual DAG path: fast
    if not ascii_printable:
        if "\0" in path:
            raise _refuse(path, "contains NUL")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
            raise _refuse(path, "contains a control character")
    if "\\" in path:
        raise _refuse(path, "contains a backslash")
    if path.startswith("/"):
        raise _refuse(path, "absolute path")
    if len(encoded) > MAX_PATH_BYTES:
        raise _refuse(path, f"longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part == "":
            raise _refuse(path, "empty component (doubled or trailing '/')")
        if part == ".":
            raise _refuse(path, "'.' component")
        if part == "..":
            raise _refuse(path, "'..' component")
        if len(part if ascii_printable else part.encode("utf-8")) > MAX_NAME_BYTES:
            raise _refuse(path, f"a name longer than {MAX_NAME_BYTES} bytes")
        if part.startswith(TEMP_PREFIX):
            raise _refuse(path, "uses dagsync's internal temp-file name")
    return path


def symlink_target_ok(link_path: str, target: str) -> bool:
    """True if a symlink at `link_path` pointing at `target` stays strictly inside the folder.

    The target must be relative, non-empty, NUL-free, valid UTF-8 and within the path
    limit. ".." is allowed only as leading components: once the target has descended
    into a name, that name may itself be a symlink, and a later ".." would climb from
    wherever it really points, which lexical resolution cannot see. Resolved from the
    link's directory, the result must keep at least one component (not the root itself).
    """
    if not isinstance(target, str) or not target or "\0" in target:
        return False
    if target.startswith("/"):
        return False
    try:
        if len(target.encode("utf-8")) > MAX_PATH_BYTES:
            return False
    except UnicodeEncodeError:
        return False
    parts = link_path.split("/")[:-1]
    descended = False
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if descended or not parts:
                return False
            parts.pop()
        else:
            descended = True
            parts.append(part)
    link_dir = link_path.split("/")[:-1]
    return bool(parts) and parts != link_dir[: len(parts)]
