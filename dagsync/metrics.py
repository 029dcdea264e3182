"""Optional Prometheus metrics and `/healthz`, served on `metrics: host:port`.

Gauges are read from the running node at scrape time (a custom collector), so nothing
on the replication path pays for them; counters and the latency histogram are updated
where the events happen."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dagsync.node import Node

log = logging.getLogger("dagsync.metrics")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.propagation = Histogram(
            "dagsync_propagation_seconds",
            "Time from a version's creation (its HLC) to its apply here; includes clock skew",
            ["folder"], registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.errors = Counter("dagsync_errors_total", "Per-file errors by kind",
                              ["folder", "kind"], registry=self.registry)
        self.applied = Counter("dagsync_applied_total", "Remote versions applied",
                               ["folder"], registry=self.registry)
        self.conflicts = Counter("dagsync_conflicts_total", "Conflicts resolved here",
                                 ["folder"], registry=self.registry)

    def attach(self, node: Node) -> None:
        self.registry.register(_NodeCollector(node))


class _NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        node = self.node
        files = GaugeMetricFamily("dagsync_files", "Live files per folder", labels=["folder"])
        size = GaugeMetricFamily("dagsync_bytes", "Live bytes per folder", labels=["folder"])
        scan = GaugeMetricFamily("dagsync_scan_duration_seconds", "Last full scan duration",
                                 labels=["folder"])
        for fid, folder in node.folders.items():
            n, b = folder.counts()
            files.add_metric([fid], n)
            size.add_metric([fid], b)
            scan.add_metric([fid], folder.last_scan_duration)
        up = GaugeMetricFamily("dagsync_peer_up", "1 when connected", labels=["peer"])
        lag = GaugeMetricFamily("dagsync_peer_files_behind",
                                "Records of the peer not yet applied here", labels=["peer"])
        for name, state in node.peers.items():
            up.add_metric([name], 1.0 if state.connected else 0.0)
            lag.add_metric([name], state.files_behind)
        unseen = GaugeMetricFamily("dagsync_conflicts_unseen",
                                   "Archived conflicts nobody looked at yet")
        unseen.add_metric([], len([e for e in node.archive.list() if not e.seen]))
        yield from (files, size, scan, up, lag, unseen)


HealthProbe = Callable[[], Awaitable[tuple[bool, list[str]]]]


async def serve_http(host: str, port: int, metrics: Metrics, health: HealthProbe) -> asyncio.Server:
    """A tiny HTTP/1.0 server: GET /metrics and GET /healthz, nothing else."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = 200, "text/plain; version=0.0.4", generate_latest(
                    metrics.registry)
            elif path == "/healthz":
                ok, reasons = await health()
                status, ctype = (200 if ok else 503), "application/json"
                body = json.dumps({"status": "ok" if ok else "unhealthy",
                                   "reasons": reasons}).encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    try:
        return await asyncio.start_server(handle, host, port, reuse_address=True)
    except OSError as exc:
        from dagsync.errors import DagsyncError

        raise DagsyncError(f"metrics {host}:{port}: cannot listen: {exc.strerror}") from None


def healthz(status: dict[str, Any]) -> tuple[bool, list[str]]:
    """Unhealthy (503) when a folder is unreadable or every configured peer is down."""
    reasons = []
    for f in status.get("folders", []):
        if not f.get("readable", True):
            reasons.append(f"folder {f['id']} unreadable")
    peers = status.get("peers", [])
    if peers and not any(p.get("state") == "connected" for p in peers):
        reasons.append("no peer connected")
    return not reasons, reasons
