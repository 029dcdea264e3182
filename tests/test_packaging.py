"""Packaging: the systemd unit verifies, the cron entry and maintainer scripts do what they
say, the Debian package builds and its command runs (`--version`, `demo`) from an extracted
tree, and the wheel installs into a clean venv with the package's version.

The build tests are marked `soak` (each takes tens of seconds): CI runs them, the quick
loop (`-m "not soak"`) does not."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dagsync

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
UNIT = PACKAGING / "dagsync.service"
VERSION = dagsync.__version__
IN_CI = bool(os.environ.get("CI"))


def need(ok: bool, what: str, fix: str) -> None:
    """Skip when a tool is missing on a developer's machine; under CI that is a failure,
    since .ci/run is meant to install it."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing under CI: {fix}")
    pytest.skip(f"{what} is missing ({fix}); set CI to fail instead")


def clean_env(**extra: str) -> dict[str, str]:
    """An environment that cannot lead a command back to this checkout or this venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    env.update(extra)
    return env


def copy_source(dest: Path) -> Path:
    """The repo without VCS, caches and build output: building never writes into it."""
    shutil.copytree(REPO, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".mypy_cache",
        ".ruff_cache", ".pytest_cache", ".hypothesis"))
    return dest


# --- systemd unit ------------------------------------------------------------------------


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, the way systemd reads a unit (repeated keys append)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def test_unit_has_the_contracted_settings() -> None:
    s = unit_settings(UNIT.read_text())

    def one(key: str, section: str = "Service") -> str:
        values = s.get((section, key))
        assert values and len(values) == 1, f"[{section}] {key}= set {values}"
        return values[0]

    assert one("ExecStart") == "/usr/bin/dagsync agent --config /etc/dagsync/dagsync.yaml"
    assert one("User") == "airflow"
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("WatchdogSec") == "30"
    assert one("Restart") == "on-failure"
    assert one("RestartSec") == "2"
    assert one("RestartPreventExitStatus") == "2"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("TimeoutStopSec") == "10"
    assert one("ProtectSystem") == "strict"
    rw = one("ReadWritePaths").split()
    assert rw[0] == "/var/lib/dagsync"  # must exist: postinst creates it
    assert {p.lstrip("-") for p in rw} >= {"/var/lib/dagsync", "/opt/airflow/dags",
                                           "/opt/airflow/plugins"}
    for key, value in [("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "read-only"), ("ProtectKernelTunables", "yes"),
                       ("ProtectControlGroups", "yes"), ("LockPersonality", "yes")]:
        assert one(key) == value
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert ("Service", "StateDirectory") not in s  # see the unit's comment
    assert one("WantedBy", "Install") == "multi-user.target"


def test_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` with no complaint about the unit. verify also checks that
    ExecStart's binary exists, and /usr/bin/dagsync exists only where the package is
    installed, so a copy of the unit runs this checkout's dagsync instead; nothing else
    is changed."""
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "systemd-analyze", "apt-get install systemd")
    assert analyze is not None
    script = Path(sys.executable).parent / "dagsync"
    command = str(script) if script.exists() else f"{sys.executable} -m dagsync"
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/bin/dagsync ") == 1
    unit = tmp_path / "dagsync.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/dagsync ", f"ExecStart={command} "))
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in (res.stdout + res.stderr).splitlines()
                  if "dagsync" in line or str(tmp_path) in line]
    assert res.returncode == 0 and not complaints, (
        f"systemd-analyze verify exited {res.returncode}:\n{res.stdout}{res.stderr}")


# --- cron ------------------------------------------------------------------------------


def test_cron_entry() -> None:
    text = (PACKAGING / "dagsync.cron").read_text()
    assert text.endswith("\n")  # cron ignores a last line without a newline
    jobs = [line for line in text.splitlines()
            if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert jobs == ["*/1 * * * * airflow flock -n /run/lock/dagsync-sync.lock dagsync sync "
                    "--config /etc/dagsync/dagsync.yaml 2>&1 | logger -t dagsync"]
    assert "PATH=/usr/bin:/bin" in text.splitlines()  # /usr/bin/dagsync, flock, logger
    assert "/etc/cron.d/dagsync\n" in text  # installed without a dot in its name


# --- shell completion -------------------------------------------------------------------


def _complete(env: dict[str, str]) -> str:
    from click.testing import CliRunner

    from dagsync.cli import main

    res = CliRunner().invoke(main, [], prog_name="dagsync", env=env)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion(shell: str) -> None:
    """What `eval "$(_DAGSYNC_COMPLETE=<shell>_source dagsync)"` and the package's
    completion files rely on: click's script, and completions of commands."""
    script = _complete({"_DAGSYNC_COMPLETE": f"{shell}_source"})
    assert "_DAGSYNC_COMPLETE" in script and "_dagsync_completion" in script
    out = _complete({"_DAGSYNC_COMPLETE": f"{shell}_complete", "COMP_WORDS": "dagsync st",
                     "COMP_CWORD": "1"})
    assert "status" in out.split("\n") or "plain,status" in out.split("\n")
    out = _complete({"_DAGSYNC_COMPLETE": f"{shell}_complete",
                     "COMP_WORDS": "dagsync conflicts ", "COMP_CWORD": "2"})
    assert {"list", "show", "restore"} <= {w.split(",")[-1] for w in out.split("\n")}


# --- scripts -----------------------------------------------------------------------------


def test_scripts_parse() -> None:
    subprocess.run(["bash", "-n", str(PACKAGING / "build-deb.sh")], check=True)
    for name in ("postinst", "prerm", "postrm"):
        script = PACKAGING / "debian" / name
        assert script.read_text().startswith("#!/bin/sh\n")
        assert os.access(script, os.X_OK), f"{script} is not executable"
        subprocess.run(["sh", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        subprocess.run([shellcheck, str(PACKAGING / "build-deb.sh"),
                        *(str(PACKAGING / "debian" / n) for n in ("postinst", "prerm",
                                                                     "postrm"))], check=True)


STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
case "$(basename "$0") $1 $2" in
    "getent passwd "*|"getent group "*)
        for u in $STUB_USERS; do
            [ "$u" = "$2" ] && { echo "$2:x:999:999::/nonexistent:/bin/false"; exit 0; }
        done
        exit 2 ;;
    "id -gn "*) echo "$2" ;;
esac
exit 0
"""


Runner = Callable[..., list[str]]


@pytest.fixture(name="run")
def maintainer(tmp_path: Path) -> Runner:
    """Runs a maintainer script with getent, adduser, install, id, systemctl and rm
    replaced by stubs that log their arguments, in a private mount namespace whose /run
    and /var/lib are empty tmpfs (so "systemd runs" and "the state dir exists" are the
    test's to choose). Needs root and unshare; nothing on the machine is touched."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and `unshare -m` (private mount namespaces)")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in ("getent", "adduser", "install", "id", "systemctl", "rm"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"

    def run(script: str, *args: str, users: str = "", systemd: bool = True,
            state_dir: bool = False) -> list[str]:
        log.write_text("")
        setup = ["mount -t tmpfs tmpfs /run", "mount -t tmpfs tmpfs /var/lib"]
        if systemd:
            setup.append("/bin/mkdir -p /run/systemd/system")
        if state_dir:
            setup.append("/bin/mkdir -p /var/lib/dagsync")
        cmd = " && ".join([*setup, 'exec sh "$0" "$@"'])
        res = subprocess.run(
            ["unshare", "-m", "sh", "-c", cmd, str(PACKAGING / "debian" / script), *args],
            capture_output=True, text=True, timeout=30,
            env=clean_env(PATH=f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
                          STUB_LOG=str(log), STUB_USERS=users),
        )
        assert res.returncode == 0, f"{script} {args} exited {res.returncode}: {res.stderr}"
        return [line for line in log.read_text().splitlines()
                if not line.startswith(("getent ", "id "))]

    return run


def test_postinst_fresh_install(run: Runner) -> None:
    calls = run("postinst", "configure", "")
    assert calls[0].startswith("adduser --quiet --system --group ")
    assert calls[0].endswith(" dagsync")
    assert "install -d -m 0750 -o dagsync -g dagsync /var/lib/dagsync" in calls
    assert calls[-1] == "systemctl daemon-reload"  # never enable, start or restart


def test_postinst_state_dir_for_airflow(run: Runner) -> None:
    calls = run("postinst", "configure", "", users="airflow")
    assert "install -d -m 0750 -o airflow -g airflow /var/lib/dagsync" in calls
    calls = run("postinst", "configure", "", users="dagsync airflow", state_dir=True)
    assert calls == ["systemctl daemon-reload"]  # existing user and dir left alone


def test_postinst_upgrade_restarts_only_a_running_agent(run: Runner) -> None:
    calls = run("postinst", "configure", "0.0.9", users="dagsync", state_dir=True)
    assert calls == ["systemctl daemon-reload", "systemctl try-restart dagsync.service"]
    assert run("postinst", "configure", "", users="dagsync", state_dir=True,
               systemd=False) == []


def test_prerm_and_postrm(run: Runner) -> None:
    assert run("prerm", "remove") == ["systemctl stop dagsync.service"]
    assert run("prerm", "upgrade", "0.2.0") == []
    assert run("postrm", "upgrade", "0.2.0") == []
    assert run("postrm", "remove") == ["rm -rf /opt/dagsync", "systemctl daemon-reload"]
    calls = run("postrm", "purge")
    assert calls == ["rm -rf /opt/dagsync",
                     "rm -f /etc/systemd/system/multi-user.target.wants/dagsync.service",
                     "systemctl daemon-reload"]
    assert not any("/var/lib/dagsync" in c or "/etc/dagsync" in c for c in calls)


# --- Debian package ----------------------------------------------------------------------


def deb_version(version: str) -> str:
    return re.sub(r"^([0-9.]+)(a|b|rc)([0-9]+)$", r"\1~\2\3", version).replace(".dev", "~dev")


@pytest.fixture(scope="module")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need(shutil.which("dpkg-deb") is not None, "dpkg-deb", "apt-get install dpkg")
    system_python = Path("/usr/bin/python3")
    ok = system_python.exists() and subprocess.run(
        [str(system_python), "-c", "import sys, venv, ensurepip; "
         "sys.exit(sys.version_info < (3, 11))"], capture_output=True).returncode == 0
    need(ok, "/usr/bin/python3 (>= 3.11) with venv", "apt-get install python3 python3-venv")
    out = tmp_path_factory.mktemp("deb")
    res = subprocess.run(
        ["bash", str(PACKAGING / "build-deb.sh"), "--out", str(out)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "BUILD_PYTHON": sys.executable},
    )
    assert res.returncode == 0, f"build-deb.sh exited {res.returncode}:\n{res.stderr[-4000:]}"
    deb = Path(res.stdout.strip().splitlines()[-1])
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert deb == out / f"dagsync_{deb_version(VERSION)}_{arch}.deb"
    assert deb.is_file()
    return deb


@pytest.fixture(scope="module")
def extracted(built_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg", "-x", str(built_deb), str(root)], check=True, timeout=120)
    return root


@pytest.mark.soak
def test_deb_metadata(built_deb: Path) -> None:
    def field(name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(built_deb), name], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert field("Package") == "dagsync"
    assert field("Version") == deb_version(VERSION)
    depends = [d.strip() for d in field("Depends").split(",")]
    assert "python3 (>= 3.11)" in depends
    assert "openssh-client" in depends
    assert any(re.fullmatch(r"python3\.\d+", d) for d in depends)  # the venv's exact Python
    assert field("Recommends") == "openssh-server"
    info = subprocess.run(["dpkg-deb", "-I", str(built_deb)], capture_output=True, text=True,
                          check=True).stdout
    for member in ("postinst", "prerm", "postrm", "conffiles"):
        assert re.search(rf"\s{member}\s", info), info
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(built_deb)],
                               capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(conffiles)) as tar:
        listed = tar.extractfile("./conffiles")
        assert listed is not None
        assert listed.read().decode().split() == ["/etc/dagsync/dagsync.yaml.example"]


@pytest.mark.soak
def test_deb_contents(built_deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(built_deb)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    entries = {}
    for line in listing:
        perms, owner, _size, _date, _time, path = line.split(None, 5)
        entries[path.split(" -> ")[0]] = (perms, owner, path)
        assert owner == "root/root", line
    for path in ("./opt/dagsync/bin/dagsync", "./opt/dagsync/pyvenv.cfg",
                 "./lib/systemd/system/dagsync.service",
                 "./etc/dagsync/dagsync.yaml.example",
                 "./usr/share/doc/dagsync/examples/dagsync.cron",
                 "./usr/share/doc/dagsync/copyright",
                 "./usr/share/bash-completion/completions/dagsync",
                 "./usr/share/zsh/vendor-completions/_dagsync"):
        assert path in entries, f"{path} not in the package"
    assert entries["./usr/bin/dagsync"][2] == "./usr/bin/dagsync -> /opt/dagsync/bin/dagsync"
    assert entries["./opt/dagsync/bin/dagsync"][0] == "-rwxr-xr-x"
    assert any(p.startswith("./opt/dagsync/lib/python3.") and p.endswith(
        "/site-packages/dagsync/cli.py") for p in entries)
    assert not any(p.startswith("./var/") for p in entries)  # the state dir is postinst's


@pytest.mark.soak
def test_deb_tree_is_relocated(extracted: Path) -> None:
    venv = extracted / "opt" / "dagsync"
    assert (venv / "bin" / "dagsync").read_text().splitlines()[0].startswith(
        "#!/opt/dagsync/bin/python")
    python = venv / "bin" / "python3"
    assert python.is_symlink()
    target = Path(os.readlink(venv / "bin" / os.readlink(python)))
    assert target.is_absolute() and target.name.startswith("python3.")
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        if line.startswith("command = "):
            assert line.endswith(" /opt/dagsync"), line
    assert (extracted / "lib/systemd/system/dagsync.service").read_text() == UNIT.read_text()
    # No file names the build's temp dir (bytecode included).
    res = subprocess.run(["grep", "-rl", "dagsync-deb.", str(extracted)], capture_output=True,
                         text=True)
    assert res.stdout == "", f"files name the build dir:\n{res.stdout[:2000]}"


def _run_extracted(extracted: Path, *args: str, timeout: float = 60,
                   ) -> subprocess.CompletedProcess[str]:
    """The extracted command, run through the extracted venv's own interpreter. Its `#!`
    names /opt/dagsync, which exists only once installed; everything else in the venv is
    relocatable (the interpreter finds the venv by where pyvenv.cfg sits). cwd is not the
    checkout, so nothing can import this repo's dagsync by accident."""
    venv = extracted / "opt" / "dagsync"
    return subprocess.run([str(venv / "bin" / "python3"), str(venv / "bin" / "dagsync"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=extracted,
                          env=clean_env())


@pytest.mark.soak
def test_deb_command_runs_from_extracted_tree(extracted: Path) -> None:
    res = _run_extracted(extracted, "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"dagsync, version {VERSION}"
    venv = extracted / "opt" / "dagsync"
    where = subprocess.run([str(venv / "bin" / "python3"), "-c",
                            "import dagsync, sys; print(dagsync.__file__); print(sys.prefix)"],
                           capture_output=True, text=True, check=True, cwd=extracted,
                           env=clean_env()).stdout.split()
    assert where[0].startswith(str(venv / "lib")), where
    assert where[1] == str(venv)


def _as_installed(extracted: Path, command: str, timeout: float
                  ) -> subprocess.CompletedProcess[str] | None:
    """`command` in a private mount namespace where the extracted /opt is bind-mounted on
    /opt: /usr/bin/dagsync -> /opt/dagsync/bin/dagsync and its `#!/opt/dagsync/bin/python`
    then resolve exactly as on an installed node, without installing anything on this
    machine. None where mount namespaces are not available (not root)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return None
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", f'mount --bind "$0/opt" /opt && {command}',
         str(extracted)],
        capture_output=True, text=True, timeout=timeout, cwd=extracted, env=clean_env())


@pytest.mark.soak
def test_deb_installed_command_runs_demo(extracted: Path) -> None:
    help_res = _run_extracted(extracted, "demo", "--help")
    if help_res.returncode != 0:
        pytest.skip(f"this build has no `dagsync demo`: {help_res.stderr.strip()[:200]}")
    res = _as_installed(extracted, '"$0/usr/bin/dagsync" --version && '
                        '/opt/dagsync/bin/dagsync demo', timeout=180)
    how = "as installed (/opt bind-mounted)"
    if res is None:
        res = _run_extracted(extracted, "demo", timeout=180)
        how = "through the extracted venv's python (no mount namespace here)"
    assert res.returncode == 0, f"demo {how} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    if how.startswith("as installed"):
        assert res.stdout.startswith(f"dagsync, version {VERSION}\n")
    assert "demo finished" in res.stdout, res.stdout


# --- wheel and sdist -------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A python with the `build` module: this one, or a throwaway venv with it."""
    if subprocess.run([sys.executable, "-c", "import build"], capture_output=True
                      ).returncode == 0:
        return sys.executable
    venv = tmp_path_factory.mktemp("buildtool") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "build"],
                   check=True, timeout=600)
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def dists(build_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`python -m build`: the sdist, then the wheel built from that sdist (so a file the
    sdist forgets breaks the wheel too)."""
    work = tmp_path_factory.mktemp("dists")
    src = copy_source(work / "src")
    out = work / "dist"
    res = subprocess.run([build_python, "-m", "build", "--outdir", str(out), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"python -m build exited {res.returncode}:\n{res.stdout[-3000:]}"\
        f"\n{res.stderr[-3000:]}"
    yield out


def the_wheel(dists: Path) -> Path:
    wheels = list(dists.glob(f"dagsync-{VERSION}-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.soak
def test_sdist_and_wheel_contents(dists: Path) -> None:
    sdist = dists / f"dagsync-{VERSION}.tar.gz"
    wheel = the_wheel(dists)
    # the C helper makes it a platform wheel, for this interpreter's ABI
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert wheel.name.startswith(f"dagsync-{VERSION}-{tag}-{tag}-linux_"), wheel.name
    assert sorted(p.name for p in dists.iterdir()) == sorted([sdist.name, wheel.name])
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproject.toml", "PKG-INFO", "README.md", "dagsync/__init__.py",
            "dagsync/sdnotify.py", "setup.py", "dagsync/_fastio.c"} <= names
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "dagsync/cli.py" in names and "dagsync/sdnotify.py" in names
        # compiled from the sdist's C source (optional only where no compiler exists)
        assert any(re.fullmatch(r"dagsync/_fastio\..*\.so", n) for n in names), names
        entry_points = zf.read(f"dagsync-{VERSION}.dist-info/entry_points.txt").decode()
        metadata = zf.read(f"dagsync-{VERSION}.dist-info/METADATA").decode()
    assert "dagsync = dagsync.launch:main" in entry_points
    assert f"\nVersion: {VERSION}\n" in metadata
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.soak
def test_wheel_installs_into_clean_venv(dists: Path, tmp_path: Path) -> None:
    """A new venv that sees this environment's packages (so the dependencies need no
    download) but not this checkout: `dagsync --version` must be the package's version."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=300)
    # When this interpreter is itself a venv (.ci/run's .venv), --system-site-packages
    # shows the base interpreter's packages only; a .pth adds this one's (last on sys.path,
    # and as a plain path entry it loads none of its .pth files, e.g. an editable install).
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_outer_env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    wheel = the_wheel(dists)
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    script = venv / "bin" / "dagsync"
    assert script.read_text().splitlines()[0] == f"#!{venv / 'bin' / 'python'}"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"dagsync, version {VERSION}"
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import dagsync; print(dagsync.__file__)"], capture_output=True,
                           text=True, check=True, cwd=tmp_path, env=clean_env()).stdout
    assert where.startswith(str(venv)), f"imported {where}, not the installed wheel"
    fast = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "from dagsync import bulkio; print(bulkio.FAST)"],
                          capture_output=True, text=True, check=True, cwd=tmp_path,
                          env=clean_env()).stdout
    assert fast.strip() == "True"  # the wheel's C helper loads
