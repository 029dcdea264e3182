"""The daemon's process life: builds a Node from the config, takes the state dir's lock,
starts the embedded SSH server, the control socket, the folder watchers and the periodic
loops (rescan, conflict archive pruning, memory trim), handles signals (SIGTERM/SIGINT
stop, SIGHUP reloads the config) and stops it all. Peer links are in links.py, the
control socket's commands in control.py."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import gc
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from dagsync import memory, sdnotify, transport
from dagsync.clock import hlc_ms
from dagsync.config import Config, load_config
from dagsync.control import CONTROL_LINE_LIMIT, ControlCommands, control_socket_path
from dagsync.engine import BatchOutcome, FolderEngine
from dagsync.errors import DagsyncError
from dagsync.hooks import ChangeHook
from dagsync.links import PeerLinks
from dagsync.node import Node, PeerState
from dagsync.watcher import FolderWatcher, WatchUnavailable

log = logging.getLogger("dagsync.agent")

WATCH_GUARD_INTERVAL = 2.0
BULK_RESUME_DELAY = 1.0  # quiet after a bulk round before the folder is watched again


class AgentLock:
    """One agent per state dir: an flock on agent.lock, released when the process dies."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DagsyncError(
                f"{self.path}: another agent already runs on this state dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def held(state_dir: Path) -> bool:
        path = state_dir / "agent.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


class Agent(ControlCommands, PeerLinks):
    """One running agent: its node, tasks, watchers and observers, from start to stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node: Node | None = None
        self.stop = asyncio.Event()
        self.lock = AgentLock(config.node.state_dir)
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.watchers: dict[str, FolderWatcher] = {}
        self._bulk_depth: dict[str, int] = {}  # bulk apply rounds running, per folder
        self._paused: set[str] = set()  # folders whose watcher a bulk round stopped
        self.started = time.time()
        self.node_key: Any = None
        self.ready = asyncio.Event()  # peers served and first scan done (systemd READY=1)
        self.hooks: dict[str, ChangeHook] = {}
        self.metrics: Any = None

    async def run(self) -> None:
        cfg = self.config
        memory.limit_arenas()
        cfg.node.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            await self._run()
        finally:
            self.lock.release()

    async def _run(self) -> None:
        cfg = self.config
        node_key = self.node_key = transport.load_node_key(cfg.node.key)
        node = self.node = Node(cfg)
        try:
            await node.open()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._request_stop, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            await self._start_observers()
            self._start_watchers()
            await node.scan_all()
            server = await transport.serve(
                cfg.node.listen_host, cfg.node.listen_port, node_key, node.authorize,
                self._inbound,
            )
            sock_path = control_socket_path(cfg)
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()
            control = await asyncio.start_unix_server(
                self._control, path=str(sock_path), limit=CONTROL_LINE_LIMIT
            )
            os.chmod(sock_path, 0o600)
            log.info("agent %s listening on %s:%d, %d folder(s), %d peer(s)", node.name,
                     cfg.node.listen_host, cfg.node.listen_port, len(node.folders),
                     len(cfg.peers))
            for peer in cfg.peers:
                self._start_dialer(peer, node_key)
            self._spawn(self._scan_loop())
            self._spawn(self._prune_loop())
            self._spawn(self._trim_when_idle())
            self.ready.set()
            sdnotify.ready(self._status_line())
            self._spawn(sdnotify.watchdog_loop(lambda: not self.stop.is_set()))
            await self.stop.wait()
            sdnotify.stopping()
            log.info("agent %s stopping", node.name)
            for watcher in self.watchers.values():
                watcher.stop()
                if watcher.task is not None:
                    watcher.task.cancel()
            server.close()
            control.close()
            for conn in list(node.connections.values()):
                conn.close("agent stopping")
            for task in [*self._dialers.values(), *self._tasks]:
                task.cancel()
            try:
                await asyncio.wait_for(
                    asyncio.gather(*self._dialers.values(), *self._tasks,
                                   return_exceptions=True),
                    1.5,
                )
            except TimeoutError:
                log.warning("some tasks did not stop within 1.5 s; exiting anyway")
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()
        finally:
            node.close()

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("received %s", sig.name)
        self.stop.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_observers(self) -> None:
        """on_change hooks, and metrics when configured."""
        node = self.node
        assert node is not None
        if self.config.metrics is not None:
            from dagsync import metrics

            self.metrics = metrics.Metrics()
            self.metrics.attach(node)
            host, port = self.config.metrics
            server = await metrics.serve_http(host, port, self.metrics, self._healthz)
            self._spawn(server.serve_forever())
            log.info("metrics and /healthz on http://%s:%d/", host, port)
        for folder in node.folders.values():
            if folder.cfg.on_change:
                self.hooks[folder.id] = ChangeHook(folder.id, str(folder.root),
                                                   folder.cfg.on_change)
            folder.on_applied.append(functools.partial(self._after_round, folder))

    def _after_round(self, folder: FolderEngine, outcome: BatchOutcome) -> None:
        hook = self.hooks.get(folder.id)
        if hook is not None:
            hook.changed(outcome.applied)
        m = self.metrics
        if m is None:
            return
        now_ms = time.time() * 1000
        for hlc in outcome.applied_hlc:
            m.propagation.labels(folder.id).observe(max(0.0, (now_ms - hlc_ms(hlc)) / 1000))
        m.applied.labels(folder.id).inc(len(outcome.applied))
        m.conflicts.labels(folder.id).inc(outcome.conflicts)
        if outcome.failed:
            m.errors.labels(folder.id, "apply").inc(len(outcome.failed))
        if outcome.refused:
            m.errors.labels(folder.id, "refused").inc(len(outcome.refused))

    async def _healthz(self) -> tuple[bool, list[str]]:
        from dagsync.metrics import healthz

        return healthz(await self.status(False))

    async def _trim_when_idle(self) -> None:
        """After a burst of work (initial sync, big rounds, serving a peer's initial
        sync), give memory back once the node has been quiet for a few seconds."""
        node = self.node
        assert node is not None

        def work() -> int:
            return sum(f.max_seq for f in node.folders.values()) + node.served

        last = -1
        while True:
            await asyncio.sleep(5)
            seqs = work()
            if seqs == last:
                continue
            await asyncio.sleep(2)
            if work() == seqs:
                gc.collect()  # a round's garbage in reference cycles goes first
                await asyncio.to_thread(memory.trim)
                log.debug("memory: heap trimmed after a burst")
                last = seqs

    async def _prune_loop(self) -> None:
        """Conflict archive retention, at start and hourly."""
        assert self.node is not None
        while True:
            retention = self.config.conflicts
            try:
                removed = await asyncio.to_thread(
                    self.node.archive.prune, keep=retention.keep,
                    max_age_days=retention.max_age / 86400,
                )
                if removed:
                    log.info("conflict archive: pruned %d old entries", len(removed))
            except OSError as exc:
                log.warning("conflict archive: prune failed: %s", exc)
            await asyncio.sleep(3600)

    def _start_watchers(self) -> None:
        node = self.node
        assert node is not None
        for folder in node.folders.values():
            self._watch(folder)
        self._spawn(self._watch_guard())

    def _watch(self, folder: FolderEngine) -> None:
        loop = asyncio.get_running_loop()
        watcher = FolderWatcher(folder.root, folder.ignore, folder.scan_some,
                                self.config.settle, loop, on_overflow=folder.scan)
        try:
            watcher.start()
        except WatchUnavailable as exc:
            folder.watcher_mode = "polling"
            log.warning("folder %s: cannot watch %s (%s); falling back to full scans "
                        "every %.0f s", folder.id, folder.root, exc, self.config.scan_interval)
            return
        folder.watcher_mode = "inotify"
        self.watchers[folder.id] = watcher
        watcher.task = loop.create_task(watcher.run())
        folder.on_bulk = functools.partial(self._bulk_round, folder)

    def _unwatch(self, folder_id: str) -> None:
        watcher = self.watchers.pop(folder_id, None)
        if watcher is not None:
            watcher.stop()
            if watcher.task is not None:
                watcher.task.cancel()

    async def _bulk_round(self, folder: FolderEngine, starting: bool) -> None:
        """A bulk apply round (an initial sync, a large deploy) stops watching the folder
        and rescans it in full when the round ends: inotify would report every file the
        round writes, and turning those into events cost a fifth of an initial sync. A
        local edit made meanwhile is found by the rescan, a few seconds later than the
        watcher would have seen it."""
        depth = self._bulk_depth.get(folder.id, 0) + (1 if starting else -1)
        self._bulk_depth[folder.id] = depth
        if starting and depth == 1 and folder.id in self.watchers:
            self._unwatch(folder.id)
            self._paused.add(folder.id)
            log.info("folder %s: bulk round: watching paused, the folder is rescanned "
                     "when it ends", folder.id)
        elif not starting and depth == 0 and folder.id in self._paused:
            self._spawn(self._resume_watching(folder))

    async def _resume_watching(self, folder: FolderEngine) -> None:
        """Watch again once the rounds are over: not from inside the round, whose objects
        are still alive then. The watcher's long-lived objects (a thread, a watch per
        directory) would be placed among them and keep the memory the round grew from
        going back; and a round that follows at once (an initial sync comes in several)
        keeps the folder paused, so it is rescanned once, not once per round."""
        await asyncio.sleep(BULK_RESUME_DELAY)
        if self._bulk_depth.get(folder.id, 0) or folder.id not in self._paused:
            return  # another bulk round began; it resumes when it ends
        self._paused.discard(folder.id)
        if self.stop.is_set():
            return
        self._watch(folder)
        await folder.scan()
        log.info("folder %s: bulk round over: watching again", folder.id)

    async def _watch_guard(self) -> None:
        """Re-watch a folder whose directory was replaced (or which failed to watch), and
        rescan it, so live watching survives `mv` and symlink-swap deployments."""
        node = self.node
        assert node is not None
        while True:
            await asyncio.sleep(WATCH_GUARD_INTERVAL)
            for folder in node.folders.values():
                if folder.id in self._paused:
                    continue  # a bulk round runs; it re-watches and rescans when it ends
                watcher = self.watchers.get(folder.id)
                if watcher is None and folder.watcher_mode == "polling":
                    continue  # inotify refused it; full scans cover it
                if watcher is not None and not watcher.root_replaced():
                    continue
                if watcher is not None:
                    log.warning("folder %s: %s now names another directory; watching it "
                                "anew", folder.id, folder.root)
                    self._unwatch(folder.id)
                if folder.root.is_dir():
                    self._watch(folder)
                    await folder.scan()

    def _status_line(self) -> str:
        return (f"serving {len(self.config.folders)} folder(s), "
                f"{len(self.config.peers)} peer(s)")

    def _on_sighup(self) -> None:
        """SIGHUP, as sent by `systemctl reload`: systemd shows `reloading` until the new
        config is in force or refused. Before the first READY=1 nothing is announced."""
        if not self.ready.is_set():
            self._reload()
            return
        sdnotify.reloading()
        try:
            self._reload()
        finally:
            sdnotify.ready(self._status_line())

    def _reload(self) -> None:
        """SIGHUP: re-read the config; peers are added or removed without a restart. An
        invalid config is refused and the running one kept."""
        try:
            new = load_config(self.config.source)
        except DagsyncError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return
        old = self.config
        if (new.node, new.folders) != (old.node, old.folders):
            log.warning("reload: node and folder changes take effect at the next restart; "
                        "peer changes apply now")
            new = _with_peers(old, new)
        node = self.node
        assert node is not None
        self.config = new
        node.config = new
        for watcher in self.watchers.values():
            watcher.settle = new.settle
        old_peers = {p.name: p for p in old.peers}
        new_peers = {p.name: p for p in new.peers}
        for name, peer in old_peers.items():
            if new_peers.get(name) != peer:
                task = self._dialers.pop(name, None)
                if task:
                    task.cancel()
                conn = node.connections.get(name)
                if conn:
                    conn.close("peer removed or changed by reload")
                if name not in new_peers:
                    node.peers.pop(name, None)
                    log.info("reload: peer %s removed", name)
        for name, peer in new_peers.items():
            if old_peers.get(name) != peer:
                node.peers.setdefault(name, PeerState(name))
                self._start_dialer(peer, self.node_key)
                log.info("reload: peer %s %s", name, "added" if name not in old_peers
                         else "changed")
        log.info("configuration reloaded from %s", new.source)

    async def _scan_loop(self) -> None:
        assert self.node is not None
        while True:
            await asyncio.sleep(self.config.scan_interval)
            try:
                await self.node.scan_all()
            except Exception:
                log.exception("periodic scan failed")
            await asyncio.to_thread(memory.trim)


def _with_peers(old: Config, new: Config) -> Config:
    """The running config with only the peers (and timings) of the new one."""
    import dataclasses

    return dataclasses.replace(old, peers=new.peers, scan_interval=new.scan_interval,
                               settle=new.settle)
