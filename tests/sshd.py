"""A private OpenSSH server for tests: 127.0.0.1 on a free port, everything (host key,
sshd_config, authorized_keys, pid file, log) in one tmp dir. Only the sshd started here
is ever signalled, by its PID.

Peers reached as `ssh://user@127.0.0.1:PORT` log in with their node key; each key's
line in authorized_keys carries a forced command (`dagsync serve --stdio --peer NAME`),
exactly as an operator sets it up on a real node."""

from __future__ import annotations

import getpass
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dagsync.localnode import free_port

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's privilege separation chroot; sshd checks it as root
REPO = Path(__file__).resolve().parents[1]

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
AuthorizedPrincipalsFile none
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
PermitRootLogin forced-commands-only
AllowUsers {user}
PermitUserEnvironment PYTHONPATH
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTTY no
PermitTunnel no
PrintMotd no
PrintLastLog no
UseDNS no
MaxStartups 64
MaxSessions 64
LoginGraceTime 20
LogLevel VERBOSE
"""


def dagsync_command(config: Path, peer: str | None) -> str:
    """The forced command for a peer's key: the absolute interpreter of this test run, so
    neither the login shell's PATH nor a pyenv/venv activation matters."""
    cmd = [sys.executable, "-m", "dagsync", "serve", "--stdio", "--config", str(config)]
    if peer is not None:
        cmd += ["--peer", peer]
    return shlex.join(cmd)


def _quote_option(value: str) -> str:
    """An authorized_keys option value: double-quoted, inner quotes backslash-escaped."""
    if "\n" in value:
        raise ValueError("authorized_keys options cannot span lines")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class SshServer:
    base: Path
    port: int
    user: str
    host_key: Path
    known_hosts: Path
    authorized_keys: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    entries: list[str] = field(default_factory=list)

    @property
    def ssh_command(self) -> str:
        """What `DAGSYNC_SSH` is set to for a dagsync process that dials this server: our
        known_hosts only, strict checking, no user/system ssh_config, no agent keys."""
        return shlex.join([
            "ssh", "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "KexAlgorithms=curve25519-sha256",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "LogLevel=ERROR",
        ])

    def env(self) -> dict[str, str]:
        return {"DAGSYNC_SSH": self.ssh_command}

    def address(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def authorize(self, public_key_line: str, command: str) -> None:
        """Let `public_key_line` ("ssh-ed25519 AAAA...") log in, always running `command`.
        sshd reads authorized_keys at every login, so this applies at once."""
        parts = public_key_line.split()
        if len(parts) < 2 or not parts[0].startswith("ssh-"):
            raise ValueError(f"not an OpenSSH public key line: {public_key_line!r}")
        options = [
            f"command={_quote_option(command)}",
            # Serve the checkout under test, whatever dagsync the interpreter would find.
            f"environment={_quote_option(f'PYTHONPATH={REPO}')}",
            "restrict",
        ]
        self.entries.append(",".join(options) + f" {parts[0]} {parts[1]} dagsync-test")
        tmp = self.authorized_keys.with_suffix(".tmp")
        tmp.write_text("".join(e + "\n" for e in self.entries))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.authorized_keys)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK)


def start_sshd(base: Path, attempts: int = 3, timeout: float = 20) -> SshServer:
    """Start sshd in the foreground (-D -e) on a free port below `base`; return once it
    accepts connections. Raises RuntimeError with sshd's own words when it cannot start."""
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    user = getpass.getuser()
    host_key = base / "ssh_host_ed25519_key"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "dagsync-test-host",
                    "-f", str(host_key)], check=True, capture_output=True, timeout=30)
    host_pub = host_key.with_suffix(".pub").read_text().split()
    authorized_keys = base / "authorized_keys"
    authorized_keys.touch(mode=0o600)
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)

    last_error = ""
    for _ in range(attempts):
        port = free_port()
        server = SshServer(
            base=base, port=port, user=user, host_key=host_key,
            known_hosts=base / "known_hosts", authorized_keys=authorized_keys,
            config=base / "sshd_config", log=base / "sshd.log",
        )
        server.known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        server.config.write_text(SSHD_CONFIG.format(
            port=port, host_key=host_key, pid_file=base / "sshd.pid",
            authorized_keys=authorized_keys, user=user,
        ))
        check = subprocess.run([SSHD, "-t", "-f", str(server.config)],
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"{SSHD} -t rejects {server.config}: {check.stderr.strip()}")
        logf = server.log.open("ab")
        server.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(server.config)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                break
            if _listening(port):
                return server
            time.sleep(0.05)
        server.stop()
        last_error = server.log_text().strip() or f"not listening after {timeout} s"
        if "Address already in use" not in last_error:
            break
    raise RuntimeError(f"{SSHD} did not start: {last_error}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(2)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False
