"""Fetching remote content for an apply: small files travel in batches, requests run
in parallel up to a limit, and every reply is checked against its announced hash before
anything may write it."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from dagsync.folder_state import BatchOutcome, Planned, content_hash
from dagsync.model import ActionKind, FileVersion, Kind

log = logging.getLogger("dagsync.engine")


class Fetch(Protocol):
    """Where remote content comes from: one connected peer."""

    async def fetch(self, v: FileVersion) -> bytes: ...

    async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]: ...


FETCH_CONCURRENCY = 8  # requests in flight per round (a batch counts once)
SMALL_FILE = 256 * 1024  # files up to this size travel in batches
BATCH_FILES = 64
BATCH_BYTES = 2 * 1024 * 1024


async def fetch_all(
    folder_id: str, planned: list[Planned], fetch: Fetch, outcome: BatchOutcome
) -> dict[str, bytes]:
    """The verified content of every file `planned` fetches, by path; a failed or
    mismatching fetch is recorded in `outcome` as that file's failure."""
    contents: dict[str, bytes] = {}
    sem = asyncio.Semaphore(FETCH_CONCURRENCY)

    def verified(v: FileVersion, data: bytes | BaseException) -> None:
        if isinstance(data, BaseException):
            outcome.failed.append((v.path, f"fetch failed: {data}"))
        elif len(data) != v.size or content_hash(data) != v.hash:
            outcome.failed.append((v.path, "content does not match its announced hash"))
            log.warning("folder %s: %s: received content does not match its hash; "
                        "not applied", folder_id, v.path)
        else:
            contents[v.path] = data

    async def one(v: FileVersion) -> None:
        async with sem:
            try:
                verified(v, await fetch.fetch(v))
            except Exception as exc:  # a failed fetch is a per-file result
                verified(v, exc)

    async def many(vs: list[FileVersion]) -> None:
        async with sem:
            try:
                results = await fetch.fetch_many(vs)
            except Exception as exc:
                results = [exc] * len(vs)
        for v, data in zip(vs, results, strict=True):
            verified(v, data)

    wanted = [
        p.action.result for p in planned
        if p.action.kind is ActionKind.FETCH and p.action.result is not None
        and p.action.result.kind is Kind.FILE
    ]
    small = [v for v in wanted if v.size <= SMALL_FILE]
    jobs = [one(v) for v in wanted if v.size > SMALL_FILE]
    batch: list[FileVersion] = []
    batch_bytes = 0
    for v in small:
        if batch and (len(batch) >= BATCH_FILES or batch_bytes + v.size > BATCH_BYTES):
            jobs.append(many(batch))
            batch, batch_bytes = [], 0
        batch.append(v)
        batch_bytes += v.size
    if batch:
        jobs.append(many(batch))
    await asyncio.gather(*jobs)
    return contents
