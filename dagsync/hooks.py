"""The per-folder `on_change` hook: a command run after a round applied changes, with
the changed paths on stdin (one per line), e.g. to make Airflow reparse at once.

A hook never blocks syncing: it runs in the background, one at a time per folder;
changes that land while it runs are handed to the next run. A failing or hanging hook
is logged and killed after HOOK_TIMEOUT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable

log = logging.getLogger("dagsync.hooks")

HOOK_TIMEOUT = 60.0


class ChangeHook:
    def __init__(self, folder_id: str, root: str, command: str) -> None:
        self.folder_id = folder_id
        self.root = root
        self.command = command
        self.pending: set[str] = set()
        self.task: asyncio.Task[None] | None = None
        self.runs = 0
        self.failures = 0

    def changed(self, paths: Iterable[str]) -> None:
        """Called on the event loop after a round applied `paths`."""
        paths = list(paths)
        if not paths:
            return
        self.pending.update(paths)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = sorted(self.pending), set()
            await self._run(batch)

    async def _run(self, paths: list[str]) -> None:
        self.runs += 1
        env = {**os.environ, "DAGSYNC_FOLDER": self.folder_id, "DAGSYNC_FOLDER_PATH": self.root}
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=env, cwd=self.root, start_new_session=True,
            )
        except OSError as exc:
            self.failures += 1
            log.error("folder %s: on_change hook could not start: %s", self.folder_id, exc)
            return
        data = "".join(p + "\n" for p in paths).encode("utf-8", "surrogateescape")
        try:
            _, err = await asyncio.wait_for(proc.communicate(data), HOOK_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self.failures += 1
            log.error("folder %s: on_change hook killed after %.0f s", self.folder_id,
                      HOOK_TIMEOUT)
            return
        if proc.returncode != 0:
            self.failures += 1
            tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
            log.error("folder %s: on_change hook exited %s%s", self.folder_id, proc.returncode,
                      f": {tail[0]}" if tail else "")
        else:
            log.info("folder %s: on_change hook ran for %d path(s)", self.folder_id, len(paths))

    async def wait_idle(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
