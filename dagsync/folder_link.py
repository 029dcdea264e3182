"""Progress of one shared folder on one peer connection (FolderLink), and the pure
helpers the connection applies to it: merging waiting index batches into one apply round
and forgetting the notes of versions the peer itself sent us (echoes, never sent back:
see next_index_batch), noting which of our records are such echoes as they are written
(echo runs), and building our next index batch for the peer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagsync import protocol as p
from dagsync.model import FileVersion

if TYPE_CHECKING:
    from dagsync.engine import FolderEngine
    from dagsync.index import Index, Record


@dataclass
class FolderLink:
    """Progress of one shared folder on this connection."""

    folder: FolderEngine
    their_index_id: int
    their_max_seq: int
    sent_seq: int  # our sequence number the peer has been sent up to
    processed_seq: int  # their sequence number we fully applied
    acked_seq: int = 0  # our sequence number the peer says it applied
    caught_up: bool = False  # we applied everything the peer had when it last said so
    failures: int = 0
    retries: int = 0  # Resends since a batch last went through: the backoff step
    retry_pending: bool = False
    round_running: bool = False  # an apply round of this peer's entries is under way
    inbox: asyncio.Queue[p.IndexFrame | p.Index] = field(default_factory=asyncio.Queue)
    # taken from the inbox but not contiguous with the last
    held: p.IndexFrame | p.Index | None = None
    wake_sender: asyncio.Event = field(default_factory=asyncio.Event)
    would: list[tuple[str, str]] = field(default_factory=list)
    remote: dict[str, FileVersion] = field(default_factory=dict)  # dry run: their records
    # Versions this peer sent us on this connection: never worth sending back to it.
    echo: dict[str, FileVersion] = field(default_factory=dict)
    # Our records known to be echoes, by sequence number, as they were written: the
    # sender passes them without reading them back (note_recorded)
    echo_runs: list[EchoRun] = field(default_factory=list)


@dataclass(slots=True)
class EchoRun:
    """Consecutive records of ours, from sequence number `first` on, each the very
    version this link's peer sent: `notes` holds their (path, echo note), in order."""

    first: int
    notes: list[tuple[str, FileVersion]]

    @property
    def last(self) -> int:
        return self.first + len(self.notes) - 1


# Most index entries merged into one apply round: a round's entries, plans and fetched
# contents are alive together, and a round of a whole initial sync (20,000 files) left
# ~10 MB of allocator arenas fragmented for good; waiting batches stay encoded.
COALESCE_ENTRIES = 6_000


# Most entries a round takes in while it runs (Round.more): beyond, a new round begins, so
# our progress is saved and acknowledged at least that often during a long initial sync.
GROW_ENTRIES = 50_000


class Round:
    """The index batches one apply round covers: those merged when it began (_coalesce)
    and those a bulk round takes in while it runs (`more`). An initial sync arrives as
    many batches; a new round for each would drain the fetch pipeline at every one."""

    def __init__(self, link: FolderLink, first: p.Index) -> None:
        self.link = link
        self.last_seq, self.caught_up = first.last_seq, first.caught_up
        self.taken = len(first.entries)

    def more(self) -> tuple[FileVersion, ...]:
        """The entries of the next index batch already waiting, if it follows on from
        this round's (else it is held for a round of its own); () when none is."""
        link = self.link
        while link.held is None and not link.inbox.empty() and self.taken < GROW_ENTRIES:
            nxt = link.inbox.get_nowait()
            if nxt.from_seq > self.last_seq:
                link.held = nxt
                break
            batch = nxt.decode()
            self.last_seq = max(self.last_seq, batch.last_seq)
            self.caught_up = batch.caught_up
            if batch.entries:
                link.echo.update((e.path, e) for e in batch.entries)
                self.taken += len(batch.entries)
                return batch.entries
        return ()


def _coalesce(link: FolderLink, msg: p.IndexFrame | p.Index) -> p.Index:
    """Merge the index batches already waiting into one apply round. A round pipelines
    fetching with writing; starting one per batch stalls the pipeline at each batch (an
    initial sync arrives as many batches). Only contiguous batches merge, so progress
    still moves over contiguous ranges only."""
    first = msg.decode()
    if link.inbox.empty():
        return first
    entries = {e.path: e for e in first.entries}
    last, caught_up = first.last_seq, first.caught_up
    while not link.inbox.empty() and len(entries) < COALESCE_ENTRIES:
        nxt = link.inbox.get_nowait()
        if nxt.from_seq > last:
            link.held = nxt  # a gap: applied in its own round, after this one
            break
        entries.update((e.path, e) for e in nxt.decode().entries)
        last, caught_up = max(last, nxt.last_seq), nxt.caught_up
    return p.Index(first.folder, first.index_id, tuple(entries.values()), last, caught_up,
                   first.from_seq)


SEND_READ = 250  # records read from the index at a time while building a batch


# Entries in the first index batch of a connection. A peer starts applying only once a
# whole batch is in: built, sent, checked and planned, a full one (MAX_INDEX_ENTRIES)
# kept a new node waiting ~50 ms longer at the start of an initial sync. Still a bulk
# round (remote_apply.BULK_ROUND), which takes in the full batches that follow, and cut
# into the receiver's first chunk and one full one (FIRST_CHUNK + APPLY_CHUNK): 600 left
# a chunk of 24 files, with its own two syncfs calls, at the start.
FIRST_BATCH_ENTRIES = 576


def note_recorded(link: FolderLink, records: list[Record]) -> None:
    """On the event loop, once a step of this link's apply round wrote `records` (in
    sequence order): those that are the very versions the peer sent become echo runs,
    which the sender passes without reading them back from the index. After an initial
    sync every record is one (docs/initial-sync.md: reading them back, and an empty
    batch to the peer after each chunk, cost the receiver up to ~10 % of its CPU)."""
    echo, runs = link.echo, link.echo_runs
    for rec in records:
        v = rec.version
        note = echo.get(v.path)
        if note is None or not (note is v or note == v):
            continue
        if runs and runs[-1].last + 1 == rec.seq:
            runs[-1].notes.append((v.path, note))
        else:
            runs.append(EchoRun(rec.seq, [(v.path, note)]))


def drop_echo_runs(link: FolderLink, upto: int) -> None:
    """Forget the echo runs the sender has passed (on the event loop, between batches)."""
    runs = link.echo_runs
    while runs and runs[0].last <= upto:
        del runs[0]


def _echo_run_after(runs: list[EchoRun], last: int) -> tuple[EchoRun | None, int | None]:
    """(the run holding sequence number last + 1, its last one), or (None, the first
    sequence number of the next run after `last`, None when there is none). The runs
    are in sequence order: they are noted as the folder's records are written."""
    for run in runs:
        if run.last > last:
            return (run, run.last) if run.first <= last + 1 else (None, run.first)
    return None, None


def next_index_batch(
    index: Index, link: FolderLink, start: int, limit: int | None = None,
    passed: int | None = None,
) -> tuple[p.IndexFrame | None, list[tuple[str, FileVersion]]]:
    """Our next Index batch for this peer: records after `start`, minus what it sent us
    itself (echoes) and what the folder does not publish, at most `limit` entries (else
    MAX_INDEX_ENTRIES); None when nothing is newer. `passed`: the records after `start`
    up to that one are already known to hold nothing to send.
    Runs in a worker thread and reads the index a few hundred records at a time, so a
    batch never exists as thousands of objects at once (see IndexBuilder); records in
    the link's echo runs are passed unread. Also returns the echo notes it looked at or
    passed: the caller drops them on the event loop (drop_echoes)."""
    folder = link.folder
    builder = p.IndexBuilder(limit)
    consumed: list[tuple[str, FileVersion]] = []
    last = start if passed is None else max(start, passed)
    while not builder.full:
        run, bound = _echo_run_after(link.echo_runs, last)
        if run is not None and bound is not None:
            consumed += run.notes[last + 1 - run.first : bound + 1 - run.first]
            last = bound
            continue
        records = index.since(folder.id, last, SEND_READ, reuse=link.echo, below=bound)
        for r in records:
            if builder.full:
                break
            last, v = r.seq, r.version
            if not folder.publishes(v):
                continue
            sent = link.echo.get(v.path)
            if sent is not None:
                consumed.append((v.path, sent))
                if sent is v or sent == v:  # `is`: the index reused the note
                    continue
            builder.add(v)
        if builder.full or len(records) == SEND_READ:
            continue
        if bound is None:
            break
        last = bound - 1  # nothing else before the next run: it is passed next
    if last == start:
        return None, consumed
    return builder.frame(folder.id, folder.index_id, last, last >= folder.max_seq,
                         start), consumed


def drop_echoes(link: FolderLink, consumed: list[tuple[str, FileVersion]]) -> None:
    """Drop the echo notes a batch used up. A note the puller replaced meanwhile (the
    peer sent a newer version of the path while the batch was read in its thread) stays:
    dropped, that newer version would be sent back to the peer that made it."""
    echo = link.echo
    for path, note in consumed:
        if echo.get(path) is note:
            del echo[path]
    if not echo:
        link.echo = {}  # a dict keeps its largest table; this one held a whole index


def _forget_echoes(link: FolderLink, applied: Iterable[str]) -> None:
    """After a round: drop the echo notes the sender will never consume, those of paths
    not applied in the round whose record it has already sent. Kept, they would hold
    every version a peer ever announced in memory (a whole index after an initial sync).
    The notes are looked through, not the round's entries: a round may take in a whole
    initial sync, and keeping its entries alive to the end held ~3 MiB of them in memory
    for good (docs/memory.md)."""
    done = set(applied)
    records = link.folder.records
    stale = []
    for path in link.echo:
        if path not in done:
            seq = records.seq(path)
            if seq is None or seq <= link.sent_seq:
                stale.append(path)
    for path in stale:
        del link.echo[path]
    if not link.echo:
        link.echo = {}


def inbox_empty(link: FolderLink) -> bool:
    return link.inbox.empty()
