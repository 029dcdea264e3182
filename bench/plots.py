"""PNG plots of one results JSON (matplotlib, `pip install -e '.[bench]'`).

make(res, outdir) writes the plots it has data for and returns {name: path}; without
matplotlib it returns {} and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"dagsync": "#2a7ab0", "rsync": "#7f7f7f", "unison": "#b07a2a",
          "Syncthing": "#3a9a4a", "lsyncd": "#a04060"}


def _color(label: str) -> str:
    for k, c in COLORS.items():
        if label.startswith(k):
            return c
    return "#555555"


def _bars(ax: Any, labels: list[str], s: list[dict[str, Any]], unit: float = 1.0) -> None:
    """Median bars with min-max whiskers."""
    med = [x["median"] / unit for x in s]
    lo = [(x["median"] - x["min"]) / unit for x in s]
    hi = [(x["max"] - x["median"]) / unit for x in s]
    ax.bar(range(len(labels)), med, yerr=[lo, hi], capsize=4,
           color=[_color(la) for la in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    for i, (m, x) in enumerate(zip(med, s, strict=True)):
        ax.annotate(f"{m:.2f}\nn={x['n']}", (i, m), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points")


def initial_items(sec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    items = []
    if sec.get("rsync_ssh", {}).get("initial_s", {}).get("n"):
        items.append(("rsync over ssh", sec["rsync_ssh"]["initial_s"]))
    if sec.get("rsync_ssh_fsync", {}).get("initial_s", {}).get("n"):
        items.append(("rsync --fsync", sec["rsync_ssh_fsync"]["initial_s"]))
    for k, label in (("unison", "unison over ssh"), ("syncthing", "Syncthing")):
        s = sec.get("anchors", {}).get(k, {}).get("initial_s", {})
        if s.get("n"):
            items.append((label, s))
    if sec.get("dagsync_agent", {}).get("initial_s", {}).get("n"):
        items.append(("dagsync agent→agent", sec["dagsync_agent"]["initial_s"]))
    if sec.get("dagsync_oneshot", {}).get("initial_s", {}).get("n"):
        items.append(("dagsync one-shot", sec["dagsync_oneshot"]["initial_s"]))
    return items


def latency_items(res: dict[str, Any]) -> list[tuple[str, list[float]]]:
    """(label, samples in s) for every latency series of the run, A -> B and C."""
    out = []
    pr = res.get("propagation", {})
    if pr.get("both_s", {}).get("samples"):
        out.append(("dagsync (defaults)", pr["both_s"]["samples"]))
    live = res.get("anchors_live", {})
    for tool, name in (("syncthing", "Syncthing"), ("lsyncd", "lsyncd")):
        for label, r in (live.get(tool) or {}).items():
            if isinstance(r, dict) and r.get("both_s", {}).get("samples"):
                out.append((f"{name} {label}", r["both_s"]["samples"]))
    return out


def make(res: dict[str, Any], outdir: Path, prefix: str = "bench") -> dict[str, Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    outdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def save(fig: Any, name: str) -> None:
        path = outdir / f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[name] = path

    # initial sync, one panel per corpus
    panels = [(k, res.get(k) or {}) for k in ("initial", "initial_big")]
    panels = [(k, s) for k, s in panels if initial_items(s)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
        for ax, (_, sec) in zip(axes[0], panels, strict=True):
            items = initial_items(sec)
            _bars(ax, [i[0] for i in items], [i[1] for i in items])
            ax.set_title(f"Initial sync to an empty peer, {sec.get('files', 0):,} files")
            ax.set_ylabel("seconds (median, min-max)")
        save(fig, "initial")

    # no-change resync / rescan
    rsc, st = res.get("rescan") or {}, res.get("steady") or {}
    items = []
    if rsc.get("rsync_ssh_nochange_s", {}).get("n"):
        items.append(("rsync over ssh", rsc["rsync_ssh_nochange_s"]))
    if st.get("unison", {}).get("nochange_s", {}).get("n"):
        items.append(("unison over ssh", st["unison"]["nochange_s"]))
    if st.get("syncthing", {}).get("rescan_s", {}).get("n"):
        items.append(("Syncthing rescan", st["syncthing"]["rescan_s"]))
    if rsc.get("scan_all_s", {}).get("n"):
        items.append(("dagsync rescan", rsc["scan_all_s"]))
    if items:
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(ax, [i[0] for i in items], [i[1] for i in items])
        ax.set_title(f"No-change resync / rescan, {rsc.get('files', 0):,} files")
        ax.set_ylabel("seconds (median, min-max)")
        save(fig, "rescan")

    # latency distribution, log scale
    lat = latency_items(res)
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        data = [[x * 1000 for x in s] for _, s in lat]
        ax.boxplot(data, vert=False, whis=(0, 100), widths=0.5)
        for i, d in enumerate(data, start=1):
            ax.scatter(d, [i] * len(d), s=8, alpha=0.5, color=_color(lat[i - 1][0]), zorder=3)
        ax.set_yticks(range(1, len(lat) + 1), [f"{la} (n={len(s)})" for la, s in lat],
                      fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("edit on A → on B and C, ms (log scale)")
        ax.set_title("Single-edit propagation latency, 3 nodes")
        ax.grid(axis="x", which="both", alpha=0.3)
        save(fig, "latency")

    # idle RSS per node
    idle, bars = res.get("idle") or {}, []
    for name, m in sorted((idle.get("mem_kib") or {}).items()):
        bars.append((f"dagsync {name.upper()}", m["VmRSS"] / 1024, 0.0))
    for name, u in sorted(((st.get("syncthing") or {}).get("idle") or {}).items()):
        each = u["rss_kib_each"]
        bars.append((f"Syncthing {name}", each[-1] / 1024, each[0] / 1024 if len(each) > 1
                     else 0.0))
    if (st.get("lsyncd") or {}).get("idle"):
        bars.append(("lsyncd", st["lsyncd"]["idle"]["rss_kib"] / 1024, 0.0))
    if bars:
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(bars))
        main = [b[1] for b in bars]
        ax.bar(x, main, color=[_color(b[0]) for b in bars], label="process")
        ax.bar(x, [b[2] for b in bars], bottom=main, color="#9fd49f",
               label="Syncthing monitor process")
        ax.set_xticks(list(x), [b[0] for b in bars], rotation=20, ha="right", fontsize=8)
        for i, b in enumerate(bars):
            ax.annotate(f"{b[1] + b[2]:.0f}", (i, b[1] + b[2]), ha="center", va="bottom",
                        fontsize=7)
        ax.set_ylabel("idle RSS, MiB")
        ax.set_title(f"Idle memory per node, {st.get('files') or 0:,} files")
        ax.legend(fontsize=7)
        save(fig, "idle-rss")

    # bytes on the wire
    w = res.get("wire") or {}
    items = [(label, w[k]["bytes"]) for k, label in (("rsync_ssh", "rsync over ssh"),
                                                     ("syncthing", "Syncthing"),
                                                     ("dagsync", "dagsync"))
             if (w.get(k) or {}).get("bytes", {}).get("n")]
    if items:
        fig, ax = plt.subplots(figsize=(6, 4))
        _bars(ax, [i[0] for i in items], [i[1] for i in items], unit=1024)
        ax.axhline(w.get("file_bytes", 1 << 20) / 1024, color="#999", ls="--", lw=1)
        ax.text(len(items) - 0.5, w.get("file_bytes", 1 << 20) / 1024, "file size",
                fontsize=7, ha="right", va="bottom")
        ax.set_yscale("log")
        ax.set_ylabel("KiB on the wire, both directions (log)")
        ax.set_title("One-line edit of a 1 MB file")
        save(fig, "wire")

    # burst
    items = []
    bu = res.get("burst") or {}
    if bu.get("converged_s", {}).get("n"):
        items.append(("dagsync (defaults)", bu["converged_s"]))
    live = res.get("anchors_live", {})
    for tool, name in (("syncthing", "Syncthing"), ("lsyncd", "lsyncd")):
        for label, r in (live.get(tool) or {}).items():
            if isinstance(r, dict) and r.get("burst_s", {}).get("n"):
                items.append((f"{name} {label}", r["burst_s"]))
    if items:
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(ax, [i[0] for i in items], [i[1] for i in items])
        ax.set_title("1,000 new files on A → on B and C")
        ax.set_ylabel("seconds (median, min-max)")
        save(fig, "burst")
    return made
