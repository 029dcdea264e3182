"""The entry point's GC handling: paused while the CLI imports, frozen once an agent
has started. Every e2e test starts its agents through it (`python -m dagsync`)."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from dagsync.launch import YOUNG_THRESHOLD, gc_paused, settle_startup


def test_gc_paused_pauses_and_restores_an_enabled_gc() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_gc_paused_restores_the_gc_after_an_error() -> None:
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("import failed")
    assert gc.isenabled()


def test_gc_paused_leaves_a_disabled_gc_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_settle_startup_freezes_what_exists_and_collects_the_young_less_often() -> None:
    before, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        settle_startup()
        assert gc.get_freeze_count() > before
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
        assert thresholds[0] < YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_command_runs_with_the_gc_enabled_again() -> None:
    """After the imports, a command's own work runs with the cyclic GC on (a one-shot
    sync of a whole folder must not pile up cycles)."""
    code = ("import gc, sys\nfrom dagsync.launch import main\n"
            "sys.argv = ['dagsync', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint(gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "True"
