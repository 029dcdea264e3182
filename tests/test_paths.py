"""Path confinement rules (SPEC guarantee 8): what a peer may name, and symlink targets."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagsync import paths
from dagsync.errors import PathRefused

ACCEPTED = [
    "dag.py",
    "a/b/c.py",
    "sub dir/with space.py",
    ".hidden",
    "..dots",
    "a/..b/c..",
    "-dash",
    "ünïcödé/日本.py",
    "a" * 255,
    "/".join(["d" * 255] * 16),  # 16 * 256 - 1 = 4095 bytes
    "~backup~",
    ".~dagsync",  # only the full prefix is reserved
]

REFUSED = [
    ("", "empty path"),
    ("/etc/passwd", "absolute path"),
    ("/", "absolute path"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("./a", "'.' component"),
    ("a/./b", "'.' component"),
    ("..", "'..' component"),
    ("../x", "'..' component"),
    ("a/../../x", "'..' component"),
    ("a/..", "'..' component"),
    ("a\0b", "contains NUL"),
    ("a\nb", "control character"),
    ("a\tb", "control character"),
    ("a\x1fb", "control character"),
    ("a\x7fb", "control character"),
    ("a\\b", "backslash"),
    ("..\\..\\x", "backslash"),
    ("a" * 256, "a name longer than 255 bytes"),
    ("é" * 128, "a name longer than 255 bytes"),  # 256 bytes in UTF-8
    ("/".join(["d" * 255] * 17), "longer than 4096 bytes"),
    ("a/.~dagsync.1234.tmp", "temp-file name"),
    (".~dagsync.x/y.py", "temp-file name"),
    ("bad\udcffname", "not valid UTF-8"),
]


@pytest.mark.parametrize("path", ACCEPTED)
def test_check_relpath_accepts_plain_relative_paths(path: str) -> None:
    assert paths.check_relpath(path) is path


@pytest.mark.parametrize(("path", "reason"), REFUSED)
def test_check_relpath_refuses_with_reason(path: str, reason: str) -> None:
    with pytest.raises(PathRefused) as info:
        paths.check_relpath(path)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message
    assert message.startswith("refused path ")


@pytest.mark.parametrize("tail", ["", "é", "\u2028"])  # the ASCII fast path and the rest
def test_check_relpath_control_characters_each_code_point(tail: str) -> None:
    for code in range(128):
        c = chr(code)
        path = f"dir/a{c}b{tail}.py"
        if code < 0x20 or code == 0x7F:
            with pytest.raises(PathRefused, match=r"NUL|control character"):
                paths.check_relpath(path)
        elif c == "\\":
            with pytest.raises(PathRefused, match="backslash"):
                paths.check_relpath(path)
        elif c == "/":
            continue  # a component separator, not a character of a name
        else:
            assert paths.check_relpath(path) is path


def test_check_relpath_refuses_non_strings() -> None:
    with pytest.raises(PathRefused, match="not a string"):
        paths.check_relpath(b"a.py")  # type: ignore[arg-type]


def test_refusal_message_is_short_for_huge_paths() -> None:
    with pytest.raises(PathRefused) as info:
        paths.check_relpath("x" * 100_000)
    assert len(str(info.value)) < 300


@given(st.lists(st.sampled_from(["a", "b", ".", "/", "..", "\\", "é", " ", "\0"]), max_size=30))
def test_accepted_paths_never_climb_out_or_are_absolute(pieces: list[str]) -> None:
    path = "".join(pieces)
    try:
        paths.check_relpath(path)
    except PathRefused:
        return
    norm = posixpath.normpath(path)
    assert not posixpath.isabs(norm)
    assert norm != ".." and not norm.startswith("../")
    assert norm == path  # one spelling per file


@given(st.text(max_size=60))
def test_check_relpath_never_accepts_escape_on_arbitrary_text(path: str) -> None:
    try:
        paths.check_relpath(path)
    except PathRefused:
        return
    norm = posixpath.normpath(path)
    assert not posixpath.isabs(norm)
    assert not (norm == ".." or norm.startswith("../"))
    assert "\0" not in path


# --- temp names ------------------------------------------------------------------------


def test_temp_name_is_recognised_and_refused_as_a_peer_path() -> None:
    name = paths.temp_name("dag.py", "abc123")
    assert name == ".~dagsync.abc123.tmp"
    assert paths.is_temp_name(name)
    with pytest.raises(PathRefused):
        paths.check_relpath(f"dir/{name}")


@pytest.mark.parametrize("final", ["dag.py", "bundle.zip", "x" * 255, "é" * 127])
def test_temp_name_never_carries_the_final_ending_and_fits(final: str) -> None:
    name = paths.temp_name(final, "f" * 400)
    assert len(name.encode()) <= paths.MAX_NAME_BYTES
    assert name.endswith(paths.TEMP_SUFFIX)
    assert not name.endswith((".py", ".zip"))
    assert paths.is_temp_name(name)


@pytest.mark.parametrize("token", ["", "a/b", "a\0b"])
def test_temp_name_rejects_bad_tokens(token: str) -> None:
    with pytest.raises(ValueError):
        paths.temp_name("dag.py", token)


@pytest.mark.parametrize(
    "name", ["dag.py", ".~dagsync.x", "x.tmp", "dagsync.x.tmp", ".~dagsync.x.tmp.py"]
)
def test_other_names_are_not_temp_names(name: str) -> None:
    assert not paths.is_temp_name(name)


# --- symlink targets -------------------------------------------------------------------

TARGETS_OK = [
    ("link", "dag.py"),
    ("link", "./dag.py"),
    ("a/link", "../dag.py"),
    ("a/b/link", "../../c/d.py"),
    ("a/link", "sibling"),
    ("a/link", "b/c"),
    ("link", "sub/dir"),
    ("a/b/link", "../c"),
]

TARGETS_REFUSED = [
    ("link", "/etc/passwd"),  # absolute
    ("link", ""),  # empty
    ("link", "a\0b"),  # NUL
    ("link", ".."),  # the folder's parent
    ("link", "../outside"),
    ("a/link", "../../outside"),
    ("link", "."),  # the root itself
    ("a/link", ".."),  # the root itself
    ("a/link", "."),  # its own directory: a loop
    ("a/b/link", ".."),  # an ancestor: a loop
    ("a/link", "b/../c"),  # '..' after descending: b may itself be a link
    ("link", "x/../../etc"),
    ("link", "bad\udcff"),  # not UTF-8
    ("link", "x/" * 2100),  # too long
]


@pytest.mark.parametrize(("link", "target"), TARGETS_OK)
def test_symlink_targets_inside_folder_are_ok(link: str, target: str) -> None:
    assert paths.symlink_target_ok(link, target)


@pytest.mark.parametrize(("link", "target"), TARGETS_REFUSED)
def test_symlink_targets_leaving_folder_are_refused(link: str, target: str) -> None:
    assert not paths.symlink_target_ok(link, target)


@given(
    st.lists(st.sampled_from(["a", "b"]), min_size=0, max_size=4),
    st.lists(st.sampled_from(["a", "b", ".", "..", ""]), min_size=1, max_size=8),
)
def test_accepted_symlink_targets_resolve_strictly_inside(
    link_dir: list[str], t: list[str]
) -> None:
    link = "/".join([*link_dir, "link"])
    target = "/".join(t)
    if not paths.symlink_target_ok(link, target):
        return
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    assert resolved not in (".", "..")
    assert not resolved.startswith("../")
    assert not posixpath.isabs(resolved)


@given(st.lists(st.lists(st.sampled_from(["a", "b", "c.py", "é"]), min_size=1, max_size=4)
                .map("/".join), max_size=30))
def test_with_parents_is_every_path_and_every_directory_above_it(rels: list[str]) -> None:
    from dagsync.folder_state import parents_of, with_parents

    assert with_parents(rels) == set(rels) | {d for r in rels for d in parents_of(r)}
