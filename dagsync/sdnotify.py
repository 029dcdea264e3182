"""systemd's notification protocol (sd_notify(3)), without libsystemd or any other dependency.

Why: the unit is `Type=notify` so that `systemctl start dagsync` returns only once the agent
really serves peers and has scanned its folders (units ordered after it, and operators'
scripts, can rely on that), and `WatchdogSec=` lets systemd restart an agent whose event loop
hangs. Both need nothing more than a datagram on an AF_UNIX socket, so a dependency (and a
compiled one at that) would buy nothing.

Everything here is a no-op returning False when `$NOTIFY_SOCKET` is unset, so the agent
behaves the same in a terminal, in tests, under cron or under another supervisor. Failures
to notify are never fatal: a supervisor that cannot be told is not a reason to stop
replicating DAGs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("dagsync.sdnotify")

# A send to the notification socket blocks only when systemd is not reading it (its queue
# is full); bounded so a wedged PID 1 stalls the agent's event loop for at most this long.
SEND_TIMEOUT = 2.0


def _address() -> bytes | None:
    """The socket address from `$NOTIFY_SOCKET`, or None when unset or unsupported.

    `@name` is Linux's abstract namespace (systemd uses it for containers and some
    managers); an absolute path is a socket file. Other forms (`vsock:`, relative paths)
    are not used for services on the systems we target, so they are refused rather than
    guessed at.
    """
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    log.debug("NOTIFY_SOCKET=%r: unsupported address, not notifying", raw)
    return None


def notify(message: str) -> bool:
    """Send one notification (newline-separated `KEY=VALUE` assignments) to the service
    manager. True when it was handed to the socket; False when not running under a manager
    that asked for notifications, or when the send failed (logged at debug level, since the
    caller has nothing better to do about it)."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
        return False
    return True


def _one_line(text: str) -> str:
    """STATUS= is a single line of the datagram; a newline would start a bogus assignment."""
    return " ".join(text.split())


def ready(status: str = "ready") -> bool:
    """READY=1: startup is done (for the agent: peers served, first scan finished). Also
    sent after a reload, which ends the `reloading` state systemd entered."""
    return notify(f"READY=1\nSTATUS={_one_line(status)}")


def status(text: str) -> bool:
    """A free-form line shown by `systemctl status dagsync`."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(status: str = "stopping") -> bool:
    """STOPPING=1: shutdown has begun, so systemd shows `deactivating` and does not take
    the time spent closing connections for a hang."""
    return notify(f"STOPPING=1\nSTATUS={_one_line(status)}")


def reloading(status: str = "reloading configuration") -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC timestamp systemd (>= 253, `Type=notify-reload`)
    requires to tell this reload from an earlier one; older systemd ignores the timestamp.
    Follow with `ready()` once the new configuration is in force (or refused)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={_one_line(status)}")


def watchdog() -> bool:
    """WATCHDOG=1: one keep-alive ping."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds that systemd expects pings within (`WatchdogSec=`),
    or None when there is no watchdog for this process.

    `$WATCHDOG_PID`, when set, names the process the watchdog is meant for: a child that
    inherited the environment (the demo's agents, an `ssh` peer) must not ping on its
    parent's behalf, or a hung parent would never be restarted.
    """
    raw = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


async def watchdog_loop(healthy: Callable[[], bool], interval: float | None = None) -> None:
    """Ping WATCHDOG=1 every half watchdog interval for as long as `healthy()` is true.

    Runs as a task on the agent's event loop on purpose: a loop blocked by a bug or a
    stuck call stops the pings, and systemd restarts the agent after `WatchdogSec=`; that
    is the hang the watchdog exists to catch. When `healthy()` is false (or raises), the
    ping is skipped, not the loop: the agent is restarted unless it recovers before the
    timeout. Half the interval, as sd_watchdog_enabled(3) advises, leaves room for a late
    wake-up. Returns at once when there is no watchdog; cancel the task to stop it.

    `interval` overrides `$WATCHDOG_USEC` (seconds); meant for tests.
    """
    period = watchdog_interval() if interval is None else interval
    if period is None or period <= 0:
        return
    was_healthy = True
    while True:
        try:
            ok = bool(healthy())
        except Exception:
            log.exception("watchdog health check failed")
            ok = False
        if ok:
            watchdog()
        elif was_healthy:
            log.warning("unhealthy: withholding systemd watchdog pings (restart after %.0f s)",
                        period)
        was_healthy = ok
        await asyncio.sleep(period / 2)
