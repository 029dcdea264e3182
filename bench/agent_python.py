"""The Python interpreter the benchmarked agents run on.

On Debian, dagsync's nodes run on Debian's own python3: packaging/build-deb.sh builds the
package's venv on /usr/bin/python3, and a plain `python3 -m venv` on a stock Debian 12 does
the same. That build is optimised with profile-guided and link-time optimisation. The
interpreter running this harness may be another build of the same version: on the
machine these figures come from, `python3` is a pyenv build without those optimisations,
~20 % slower in pure Python (docs/initial-sync.md). So by default (`packaged`) the agents
run on the interpreter the package would use, in a venv of their own holding the same
versions of dagsync's dependencies as the harness's environment: the figures are then
those of an operator's nodes. `harness` runs them on this interpreter instead, and a path
names any other. The choice and both interpreters are written into the results.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGED = os.environ.get("DEB_PYTHON", "/usr/bin/python3")  # as packaging/build-deb.sh
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dagsync-bench"
# What an interpreter is: its version, and whether libpython is a shared library it calls
# through (position-independent code, calls through the PLT) or linked into the binary.
_PROBE = ("import json, platform, sys; maps = open('/proc/self/maps').read(); "
          "print(json.dumps({'version': platform.python_version(), "
          "'ok': sys.version_info >= (3, 11), 'base': sys.base_prefix, "
          "'libpython': 'shared' if 'libpython' in maps else 'static'}))")


@dataclass(frozen=True)
class AgentPython:
    exe: str  # the interpreter to start agents with
    info: dict[str, str]  # for the results: what was chosen, and why


def describe(exe: str) -> dict[str, str]:
    """Version and build of an interpreter; empty if it does not run."""
    try:
        out = subprocess.run([exe, "-I", "-c", _PROBE], capture_output=True, text=True,
                             timeout=60, check=True).stdout
        return json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def _label(d: dict[str, str], exe: str) -> str:
    return f"Python {d.get('version')} at {exe} (libpython {d.get('libpython')})"


def _pins() -> list[str]:
    """dagsync's runtime requirements and what they need, at the versions installed here."""
    seen: dict[str, str] = {}
    todo = [r for r in md.requires("dagsync") or [] if "extra ==" not in r]
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0]
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            seen[key] = md.version(name)
        except md.PackageNotFoundError:
            continue  # a requirement this platform's markers leave out
        todo += [r for r in md.requires(name) or [] if "extra ==" not in r]
    return sorted(f"{k}=={v}" for k, v in seen.items())


def _venv(base_exe: str, described: dict[str, str], log: Callable[[str], None]) -> str:
    """A venv on `base_exe` with the pinned dependencies, made once and kept in CACHE."""
    pins = _pins()
    key = hashlib.sha256(json.dumps([os.path.realpath(base_exe), described, pins])
                         .encode()).hexdigest()[:12]
    where = CACHE / f"agent-venv-{key}"
    exe = where / "bin" / "python"
    if (where / "ready").exists() and exe.exists():
        return os.fspath(exe)
    log(f"making the agents' venv {where} on {base_exe} ({len(pins)} pinned packages)")
    subprocess.run([base_exe, "-m", "venv", "--clear", os.fspath(where)], check=True,
                   capture_output=True)
    subprocess.run([os.fspath(exe), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "setuptools", *pins], check=True,
                   capture_output=True)  # setuptools: the snapshot's C helper is built here
    (where / "ready").write_text("\n".join(pins) + "\n")
    return os.fspath(exe)


def _unusable(d: dict[str, str]) -> str:
    """Why an interpreter described by `describe` cannot run the agents; "" if it can."""
    if not d:
        return "not found or does not run"
    if not d.get("ok"):
        return "older than 3.11"
    if os.path.realpath(d["base"]) == os.path.realpath(sys.base_prefix):
        return "the harness's own"
    return ""


def resolve(choice: str, log: Callable[[str], None]) -> AgentPython:
    """`packaged` (default), `harness`, or an interpreter's path. A packaged interpreter
    that is missing, older than 3.11, the harness's own, or cannot make a venv falls
    back to the harness's, and the results say so."""
    harness = describe(sys.executable)
    info = {"choice": choice, "harness": _label(harness, sys.executable)}
    if choice == "harness":
        return AgentPython(sys.executable, {**info, "agents": info["harness"]})
    base = PACKAGED if choice == "packaged" else choice
    d = describe(base)
    why = _unusable(d)
    if not why:
        try:
            exe = _venv(base, d, log)
        except (OSError, subprocess.CalledProcessError) as exc:
            why = f"no venv: {getattr(exc, 'stderr', b'') or exc}"[:300]
    if why:
        log(f"agents run on the harness's interpreter: {base} is {why}")
        return AgentPython(sys.executable, {**info, "agents": info["harness"],
                                            "fallback": f"{base}: {why}"})
    return AgentPython(exe, {**info, "agents": f"{_label(d, base)}, in the venv "
                                               f"{Path(exe).parent.parent}"})


def add_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--agent-python", default="packaged", metavar="packaged|harness|PATH",
                    help="the interpreter the agents run on: `packaged` (default), the one "
                         f"the Debian package uses ({PACKAGED}), in a venv of its own with "
                         "the harness's dependency versions; `harness`, this one; or a path")
