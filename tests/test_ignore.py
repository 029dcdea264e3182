"""What is never synced: built-in junk, dagsync temp names, user gitignore patterns."""

from __future__ import annotations

import time

import pathspec
import pytest

from dagsync.ignore import BUILTIN_IGNORES, IgnoreMatcher


@pytest.mark.parametrize(
    ("path", "is_dir"),
    [
        ("__pycache__", True),
        ("dags/__pycache__", True),
        ("dags/__pycache__/x.cpython-311.pyc", False),
        ("dags/__pycache__/anything.py", False),
        ("x.pyc", False),
        ("a/b/x.pyo", False),
        (".git", True),
        (".git/config", False),
        ("sub/.hg", True),
        (".svn/entries", False),
        ("dag.py.swp", False),
        (".dag.py.swo", False),
        ("a/.dag.py.swx", False),
        ("dag.py~", False),
        (".#dag.py", False),
        ("#dag.py#", False),
        ("sub/#dag.py#", False),
        (".DS_Store", False),
        ("4913", False),
        ("sub/4913", False),
        (".~dagsync.abc123.tmp", False),
        ("sub/.~dagsync.x.tmp", False),
    ],
)
def test_builtin_ignores(path: str, is_dir: bool) -> None:
    assert IgnoreMatcher().ignored(path, is_dir)


@pytest.mark.parametrize(
    ("path", "is_dir"),
    [
        ("dag.py", False),
        ("sub/dag.py", False),
        ("sub", True),
        ("pycache/x.py", False),
        ("x.pyc.py", False),
        ("#", False),
        ("a#b#", False),
        ("git/config", False),
        ("49130", False),
        (".~dagsync.x.py", False),
        ("~dag.py", False),
        ("", True),
    ],
)
def test_ordinary_names_are_not_ignored(path: str, is_dir: bool) -> None:
    assert not IgnoreMatcher().ignored(path, is_dir)


def test_builtins_are_effective_gitignore_lines() -> None:
    """No built-in is silently a comment or blank line (an unescaped "#*#" would be)."""
    spec = pathspec.GitIgnoreSpec.from_lines(BUILTIN_IGNORES)
    assert len(spec.patterns) == len(BUILTIN_IGNORES)
    assert all(p.include is True for p in spec.patterns)


def test_user_patterns() -> None:
    m = IgnoreMatcher(["*.log", "/build/", "scratch/", "dags/tmp_*.py", "!keep.log"])
    assert m.ignored("a.log", False)
    assert m.ignored("deep/er/a.log", False)
    assert not m.ignored("keep.log", False)
    assert m.ignored("build", True)
    assert m.ignored("build/x.py", False)
    assert not m.ignored("sub/build", True)  # anchored to the folder root
    assert not m.ignored("sub/build/x.py", False)
    assert m.ignored("scratch", True)
    assert m.ignored("a/scratch/b/c.py", False)
    assert not m.ignored("scratch", False)  # "x/" only matches directories
    assert m.ignored("dags/tmp_1.py", False)
    assert not m.ignored("dags/sub/tmp_1.py", False)
    assert not m.ignored("dags/dag_1.py", False)


def test_negation_cannot_reinclude_below_an_ignored_directory() -> None:
    """git's rule, which the full walk follows by not descending: a later `!pattern`
    cannot bring back a file whose directory is ignored."""
    m = IgnoreMatcher(["x/", "!x/keep.py", "!x/"])
    # "!x/" re-includes the directory itself, so its files count again
    assert not m.ignored("x", True)
    m = IgnoreMatcher(["x/", "!x/keep.py"])
    assert m.ignored("x", True)
    assert m.ignored("x/keep.py", False)


def test_complex_patterns_and_wildcards() -> None:
    m = IgnoreMatcher(["data?.csv", "[abc]*.tmpl", "**/gen/**", "a/**/z.py", "sp\\ ace"])
    assert m.ignored("data1.csv", False)
    assert not m.ignored("data12.csv", False)
    assert m.ignored("q/bfoo.tmpl", False)
    assert not m.ignored("dfoo.tmpl", False)
    assert m.ignored("x/gen/y.py", False)
    assert m.ignored("a/b/c/z.py", False)
    assert m.ignored("a/z.py", False)
    assert not m.ignored("b/z.py", False)
    assert m.ignored("sp ace", False)


def test_comments_and_blank_lines_ignore_nothing() -> None:
    m = IgnoreMatcher(["# a comment", "", "   "])
    assert not m.ignored("dag.py", False)
    assert not m.ignored("# a comment", False)


def test_walker_shortcut_agrees_with_ignored() -> None:
    """clean_dir + ignored_child (what the scanner uses) give exactly ignored()'s answers."""
    m = IgnoreMatcher(["logs/", "/build/", "x/", "!x/keep.py", "dags/tmp_*.py", "*.bak", "!a.bak"])
    tree = [
        ("dags", True),
        ("dags/tmp_1.py", False),
        ("dags/dag.py", False),
        ("dags/a.bak", False),
        ("dags/b.bak", False),
        ("dags/logs", True),
        ("dags/logs/x.py", False),
        ("build", True),
        ("build/x.py", False),
        ("sub", True),
        ("sub/build", True),
        ("sub/build/x.py", False),
        ("x", True),
        ("x/keep.py", False),
        ("sub/__pycache__", True),
        ("sub/.~dagsync.a.tmp", False),
    ]
    for path, is_dir in tree:
        parent, _, name = path.rpartition("/")
        if parent and m.ignored(parent, True):
            continue  # the walker never gets here
        fast = m.ignored_child(path, name, is_dir, m.clean_dir(parent))
        assert fast == m.ignored(path, is_dir), path


def test_matching_is_fast() -> None:
    """Called for every entry of a 20,000-file scan: not the bottleneck (generous bound)."""
    m = IgnoreMatcher(["logs/", "*.bak", "/build/", "dags/tmp_*.py"])
    paths = [f"dags/team{i % 40}/sub/dag_{i}.py" for i in range(20_000)]
    start = time.perf_counter()
    hits = sum(m.ignored_child(p, p.rpartition("/")[2], False, True) for p in paths)
    elapsed = time.perf_counter() - start
    assert hits == 0
    assert elapsed < 1.0, elapsed


def test_builtins_alone_are_sorted_without_pathspec_and_answer_the_same() -> None:
    """With no user patterns the built-ins are sorted by hand (pathspec is imported only
    once a name looks like one): the answers are those of the pathspec-parsed lines."""
    by_hand, parsed = IgnoreMatcher(), IgnoreMatcher(["# a comment: no pattern"])
    paths = [("dags/__pycache__", True), ("__pycache__", False), ("a/x.pyc", False),
             ("a/.git/config", False), ("b/#x#", False), ("#", False), ("4913", False),
             ("sub/4913", True), ("dag.py~", False), (".#dag.py", False), ("a.py", False),
             ("x.pyc.py", False), (".svn", True), (".svn", False), ("q/.DS_Store", False)]
    for path, is_dir in paths:
        assert by_hand.ignored(path, is_dir) == parsed.ignored(path, is_dir), path


def test_pathspec_is_imported_only_when_a_name_may_be_ignored() -> None:
    """An agent's start-up (and a new node's whole initial sync) goes without it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dagsync.ignore import IgnoreMatcher\n"
        "m = IgnoreMatcher()\n"
        "assert not m.ignored('dags/sales/etl.py', False) and m.clean_dir('dags/sales')\n"
        "assert 'pathspec' not in sys.modules\n"
        "assert m.ignored('dags/__pycache__/etl.cpython-311.pyc', False)\n"
        "assert 'pathspec' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
