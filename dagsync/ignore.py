"""Which paths of a folder are never synced: built-in junk, dagsync temp files, user patterns.

Patterns use gitignore syntax (matched by `pathspec.GitIgnoreSpec`), with git's rule that
nothing below an ignored directory can be re-included by a later `!pattern`: the full
walk skips ignored directories, so `ignored()` must say the same for any path below one.

The matcher is called for every entry of every scan, so it avoids pathspec's per-pattern
loop for the common answer ("not ignored"): simple patterns (`name`, `*.ext`, `prefix*`,
`pre*suf`, without slashes) become a set and `str.startswith`/`endswith` tuples checked
per path component, and the others one combined regex. Only when one of them could match
does the exact gitignore evaluation run. Negated patterns cannot make a path ignored, so
they are left out of that prefilter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dagsync.paths import is_temp_name as _is_temp_name

if TYPE_CHECKING:
    import pathspec

# Editor droppings, VCS metadata and bytecode. "#*#" (Emacs autosave) is written with an
# escaped "#": unescaped, gitignore reads the line as a comment.
BUILTIN_IGNORES: tuple[str, ...] = (
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    ".git/",
    ".hg/",
    ".svn/",
    "*.swp",
    "*.swo",
    "*.swx",
    "*~",
    ".#*",
    "\\#*#",
    ".DS_Store",
    "4913",
)

_NAMED_GROUP = re.compile(r"\(\?P<[^>]+>")
_GLOB_SPECIAL = frozenset("*?[]\\!/")


def _literal(text: str) -> str | None:
    """`text` without its backslash escapes when it holds no wildcard, else None."""
    out: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in _GLOB_SPECIAL:
            return None
        else:
            out.append(ch)
    return None if escaped else "".join(out)


class IgnoreMatcher:
    """Built-in ignores + dagsync temp names + `patterns` (gitignore syntax)."""

    __slots__ = ("_exact_names", "_lines", "_others", "_pairs", "_prefixes", "_spec_",
                 "_suffixes")

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        self._lines = [*BUILTIN_IGNORES, *patterns]
        self._spec_: pathspec.GitIgnoreSpec | None = None
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        pairs: list[tuple[str, str]] = []
        others: list[str] = []
        if not patterns:  # the built-ins are all simple: no pathspec needed to sort them
            for line in BUILTIN_IGNORES:
                if not self._classify(line, exact, prefixes, suffixes, pairs):
                    raise AssertionError(f"built-in ignore {line!r} is not a simple pattern")
        for pat in self._spec.patterns if patterns else ():
            if pat.include is not True or pat.regex is None:
                continue  # comments, blanks and negations can never make a path ignored
            raw = getattr(pat, "pattern", None)
            if not self._classify(raw, exact, prefixes, suffixes, pairs):
                others.append(_NAMED_GROUP.sub("(?:", pat.regex.pattern))
        self._exact_names = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffixes = tuple(suffixes)
        self._pairs = tuple(pairs)
        self._others = re.compile("|".join(f"(?:{o})" for o in others)) if others else None

    @property
    def _spec(self) -> pathspec.GitIgnoreSpec:
        """The exact gitignore evaluation, built when first needed: importing pathspec
        and compiling the patterns cost an agent ~15 ms of start-up, and a folder with
        no patterns of its own needs it only once a name looks like a built-in ignore
        (a new node's initial sync never does)."""
        if self._spec_ is None:
            import pathspec

            self._spec_ = pathspec.GitIgnoreSpec.from_lines(self._lines)
        return self._spec_

    @staticmethod
    def _classify(
        raw: object,
        exact: set[str],
        prefixes: list[str],
        suffixes: list[str],
        pairs: list[tuple[str, str]],
    ) -> bool:
        """File a simple one-component pattern under a fast check; False if not simple."""
        if not isinstance(raw, str):
            return False
        body = raw.removesuffix("/")
        if not body or body != body.strip() or "/" in body or body.count("*") > 1:
            return False
        if "*" not in body:
            lit = _literal(body)
            if lit is None:
                return False
            exact.add(lit)
            return True
        head, _, tail = body.partition("*")
        lhead, ltail = _literal(head), _literal(tail)
        if lhead is None or ltail is None:
            return False
        if not lhead and not ltail:
            return False  # a bare "*": leave it to the regex path
        if not ltail:
            prefixes.append(lhead)
        elif not lhead:
            suffixes.append(ltail)
        else:
            pairs.append((lhead, ltail))
        return True

    def _name_may_match(self, name: str) -> bool:
        """Could a simple include pattern match the single path component `name`?"""
        if name in self._exact_names or name.startswith(self._prefixes):
            return True
        if name.endswith(self._suffixes):
            return True
        for head, tail in self._pairs:
            if len(name) >= len(head) + len(tail) and name.startswith(head) and name.endswith(tail):
                return True
        return False

    def _others_may_match(self, path: str) -> bool:
        """Could a complex include pattern match `path` or a directory above it?
        `path` ends with "/" when it names a directory."""
        others = self._others
        if others is None:
            return False
        if others.match(path):
            return True
        pos = path.find("/")
        while pos != -1 and pos + 1 < len(path):
            if others.match(path, 0, pos + 1):
                return True
            pos = path.find("/", pos + 1)
        return False

    def _exact(self, relpath: str, is_dir: bool) -> bool:
        match = self._spec.match_file
        pos = relpath.find("/")
        while pos != -1:  # git: nothing below an ignored directory comes back
            if match(relpath[: pos + 1]):
                return True
            pos = relpath.find("/", pos + 1)
        return bool(match(relpath + "/" if is_dir else relpath))

    def ignored(self, relpath: str, is_dir: bool) -> bool:
        """True when the folder-relative POSIX path `relpath` (or a directory above it) is
        ignored. `is_dir` says whether `relpath` itself is a directory."""
        if not relpath:
            return False
        if _is_temp_name(relpath[relpath.rfind("/") + 1 :]):
            return True
        if not any(map(self._name_may_match, relpath.split("/"))) and not (
            self._others_may_match(relpath + "/" if is_dir else relpath)
        ):
            return False
        return self._exact(relpath, is_dir)

    # Walkers: the same answers as ignored(), cheaper when the parent is known not ignored.

    def clean_dir(self, reldir: str) -> bool:
        """True when no pattern can match the directory `reldir` ("" for the root) nor any
        directory above it. Children of a clean directory only need their own name
        checked: pass the result to ignored_child()."""
        if not reldir:
            return True
        return not any(map(self._name_may_match, reldir.split("/"))) and not (
            self._others_may_match(reldir + "/")
        )

    def ignored_child(self, relpath: str, name: str, is_dir: bool, parent_clean: bool) -> bool:
        """ignored(relpath, is_dir) for an entry `name` of a directory that is itself not
        ignored; `parent_clean` is clean_dir() of that directory."""
        if _is_temp_name(name):
            return True
        if (
            parent_clean
            and not self._name_may_match(name)
            and not (
                self._others is not None
                and self._others_may_match(relpath + "/" if is_dir else relpath)
            )
        ):
            return False
        return self._exact(relpath, is_dir)
