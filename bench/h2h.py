"""The head-to-head part of docs/benchmarks.md: issue 7's goals, figures (a)-(f) for
dagsync beside rsync, unison, Syncthing and lsyncd from the same run, the plots, and
the scale section."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

GOAL_INITIAL_RATIO = 1.0  # initial sync <= 1.0x rsync over ssh
GOAL_ST_DEFAULT_X = 100.0  # p50 at least 100x faster than Syncthing's default
GOAL_ST_TUNED_X = 10.0  # ... and 10x faster than Syncthing at fsWatcherDelayS=1


def _s(x: float | None) -> str:
    if x is None:
        return "—"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    return f"{x:.3f} s" if x < 10 else f"{x:.2f} s"


def _row(tool: str, what: str, s: dict[str, Any] | None, note: str = "") -> str:
    if not s or not s.get("n"):
        return f"| {tool} | {what} | — | — | — | 0 | not measured |"
    return (f"| {tool} | {what} | {_s(s['min'])} | {_s(s['median'])} | {_s(s['max'])} | "
            f"{s['n']} | {note} |")


def _st_settings(res: dict[str, Any], tool: str) -> dict[str, dict[str, Any]]:
    d = (res.get("anchors_live") or {}).get(tool) or {}
    return {k: v for k, v in d.items() if isinstance(v, dict) and "both_s" in v}


def _default_fast(settings: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    default = next((v for k, v in settings.items() if "default" in k), None)
    fast = next((v for k, v in settings.items() if "default" not in k), None)
    return default, fast


def goals(res: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    for key, label in (("initial", "(a) initial sync"), ("initial_big", "(a) initial sync")):
        ini = res.get(key) or {}
        r = (ini.get("dagsync_agent") or {}).get("ratio_vs_rsync")
        if r:
            g[f"{key}_ratio"] = {
                "goal": f"{label}, {ini['files']:,} files, dagsync agent → agent vs rsync "
                        "over ssh",
                "target": f"≤ {GOAL_INITIAL_RATIO:.1f}x (median / median)",
                "measured": f"{r['median']:.2f}x ({_s(ini['dagsync_agent']['initial_s']['median'])}"
                            f" vs {_s(ini['rsync_ssh']['initial_s']['median'])}; min/min "
                            f"{r['min']:.2f}x)",
                "ok": r["median"] <= GOAL_INITIAL_RATIO}
    pr = res.get("propagation") or {}
    st_default, st_fast = _default_fast(_st_settings(res, "syncthing"))
    if pr.get("both_s") and st_default:
        d = pr["both_s"]["p50"]
        for k, ref, target, label in (
                ("p50_vs_st_default", st_default, GOAL_ST_DEFAULT_X, "Syncthing default"),
                ("p50_vs_st_tuned", st_fast, GOAL_ST_TUNED_X, "Syncthing fsWatcherDelayS=1")):
            if not ref:
                continue
            x = ref["both_s"]["p50"] / d
            g[k] = {"goal": f"(c) edit propagation p50 (A → B and C) vs {label}",
                    "target": f"≥ {target:.0f}x faster",
                    "measured": f"{x:.0f}x ({_s(d)} vs {_s(ref['both_s']['p50'])})",
                    "ok": x >= target}
    idle, st = res.get("idle") or {}, (res.get("steady") or {}).get("syncthing") or {}
    if idle.get("mem_kib") and st.get("idle"):
        ds = max(v["VmRSS"] for v in idle["mem_kib"].values())
        main = min(u["rss_kib_each"][-1] for u in st["idle"].values())
        both = min(u["rss_kib"] for u in st["idle"].values())
        g["rss_vs_st"] = {
            "goal": "(e) idle RSS per node vs Syncthing (same corpus)",
            "target": "below Syncthing's",
            "measured": f"dagsync max {ds / 1024:.0f} MiB vs Syncthing min {main / 1024:.0f} "
                        f"MiB main process ({both / 1024:.0f} MiB with its monitor)",
            "ok": ds < main}
    return g


def _img(lines: list[str], plots: dict[str, str], name: str, alt: str) -> None:
    if name in plots:
        lines += [f"![{alt}]({plots[name]})", ""]


def render(res: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Markdown lines; `plots` maps plot names to paths relative to the doc."""
    L: list[str] = []
    w = L.append
    v = res["meta"]["versions"].get("anchors") or {}
    if not v:
        return L
    w("## Head-to-head (same machine, same run)")
    w("")
    w(f"Tools: rsync `{res['meta']['versions'].get('rsync')}` over OpenSSH "
      f"`{res['meta']['versions'].get('openssh')}`; unison `{v.get('unison')}`; Syncthing "
      f"`{v.get('syncthing')}`; lsyncd `{v.get('lsyncd')}`; dagsync "
      f"{res['meta']['versions'].get('dagsync')} (this run's snapshot). All on 127.0.0.1: "
      "the ssh-based tools go through one private sshd; Syncthing nodes have discovery, "
      "relays, NAT traversal, usage and crash reporting and upgrades off and dial each other "
      "at static loopback addresses. Completion is judged the same way for every tool "
      "(file count, then size and SHA-256 of every file, tool markers excluded).")
    w("")
    if not plots:
        w("> No plots: matplotlib is not installed (`pip install -e '.[bench]'`).")
        w("")

    # (a)
    w("### (a) Initial sync to an empty peer")
    w("")
    for key in ("initial", "initial_big"):
        ini = res.get(key) or {}
        if not ini.get("rsync_ssh"):
            continue
        anc = ini.get("anchors") or {}
        w(f"**{ini['files']:,} files** ({ini['rsync_ssh']['initial_s'].get('n', 0)} "
          "interleaved runs per tool):")
        w("")
        w("| Tool | What is timed | Min | Median | Max | n | Notes |")
        w("|---|---|---|---|---|---|---|")
        w(_row("rsync -a --delete over ssh", "start → exit", ini["rsync_ssh"]["initial_s"]))
        fs = ini.get("rsync_ssh_fsync")
        if fs:
            w(_row("rsync -a --delete --fsync over ssh", "start → exit", fs["initial_s"],
                   "reference: as durable as dagsync"))
        w(_row("unison -batch over ssh", "start → exit (fresh archives)",
               (anc.get("unison") or {}).get("initial_s")))
        stx = anc.get("syncthing") or {}
        w(_row("Syncthing", "start of new B → B identical to A", stx.get("initial_s"),
               f"A scanned first ({_s(stx.get('a_first_scan_s'))}, not timed)"))
        ag = ini.get("dagsync_agent") or {}
        w(_row("dagsync agent → agent", "start of new B → B identical to A",
               ag.get("initial_s"), f"{ag['ratio_vs_rsync']['median']:.2f}x rsync (median)"
               if ag.get("ratio_vs_rsync") else ""))
        one = ini.get("dagsync_oneshot") or {}
        if (one.get("initial_s") or {}).get("n"):
            w(_row("dagsync one-shot `sync`", "start → B identical", one["initial_s"]))
        w("")
    _img(L, plots, "initial", "initial sync, median with min-max whiskers")

    # (b)
    rsc, st = res.get("rescan") or {}, res.get("steady") or {}
    if rsc.get("scan_all_s") or st:
        w(f"### (b) No-change resync / rescan, {rsc.get('files') or st.get('files') or 0:,} "
          "files")
        w("")
        w("| Tool | What is timed | Min | Median | Max | n | Notes |")
        w("|---|---|---|---|---|---|---|")
        w(_row("rsync -a --delete over ssh", "start → exit, nothing to do",
               rsc.get("rsync_ssh_nochange_s"), "includes an ssh connection"))
        w(_row("unison -batch over ssh", "start → exit, nothing to do",
               (st.get("unison") or {}).get("nochange_s"), "includes an ssh connection"))
        w(_row("Syncthing", "`POST /rest/db/scan` → idle", (st.get("syncthing") or {})
               .get("rescan_s"), "node A of 3, in sync"))
        ls = st.get("lsyncd") or {}
        if ls.get("startup_in_sync_s") is not None:
            w(f"| lsyncd | start → startup rsync done (target in sync) | | "
              f"{_s(ls['startup_in_sync_s'])} | | 1 | lsyncd has no rescan; this is its "
              "full-tree rsync at start |")
        w(_row("dagsync", "`Node.scan_all()` (the periodic rescan)", rsc.get("scan_all_s"),
               "in process, no network: the agent only rescans locally"))
        w("")
        _img(L, plots, "rescan", "no-change resync and rescan")

    # (c)
    pr = res.get("propagation") or {}
    if pr.get("both_s"):
        w("### (c) Single-edit propagation latency, A → B and C")
        w("")
        w("One 4,096-byte DAG file rewritten in place on A; latency = until B **and** C hold "
          "the new bytes (polled every 1 ms). Anchors: each edit 1-2 s (random) after the "
          "previous one arrived, so their delay timers are hit at a random phase.")
        w("")
        w("| Tool | Setting | p50 | p99 | min | max | n |")
        w("|---|---|---|---|---|---|---|")
        b = pr["both_s"]
        w(f"| dagsync, 3 agents (full mesh) | defaults (`settle` 20 ms) | {_s(b['p50'])} | "
          f"{_s(b['p99'])} | {_s(b['min'])} | {_s(b['max'])} | {b['n']} |")
        for tool, name in (("syncthing", "Syncthing, 3 nodes (full mesh)"),
                           ("lsyncd", "lsyncd A → B, A → C (rsync over ssh)")):
            for label, r in _st_settings(res, tool).items():
                x = r["both_s"]
                w(f"| {name} | {label} | {_s(x['p50'])} | {_s(x['p99'])} | {_s(x['min'])} | "
                  f"{_s(x['max'])} | {x['n']} |")
        w("")
        w("Anchors take seconds per edit at their defaults, so they get fewer edits (their n "
          "above; `--slow-trials`, `--fast-trials`); p99 of so few edits is close to their "
          "max.")
        w("")
        _img(L, plots, "latency", "latency distribution, log scale")

    # (d)
    bu = res.get("burst") or {}
    live = res.get("anchors_live") or {}
    if bu.get("converged_s") or live:
        w("### (d) 1,000-file burst to 3 nodes")
        w("")
        w("1,000 new 4 KB files written on A (in 10 folders) → until B and C hold every one "
          "with its content. dagsync: 3 agents; Syncthing: 3 instances in a full mesh; "
          "lsyncd: one daemon on A with two `sync {}` blocks (A → B, A → C over ssh).")
        w("")
        w("| Tool | Setting | Min | Median | Max | n | Writing took (median) |")
        w("|---|---|---|---|---|---|---|")
        if bu.get("converged_s"):
            s = bu["converged_s"]
            w(f"| dagsync | defaults | {_s(s['min'])} | {_s(s['median'])} | {_s(s['max'])} | "
              f"{s['n']} | {_s(bu['write_s']['median'])} |")
        for tool, name in (("syncthing", "Syncthing"), ("lsyncd", "lsyncd")):
            for label, r in _st_settings(res, tool).items():
                s = r.get("burst_s") or {}
                if s.get("n"):
                    w(f"| {name} | {label} | {_s(s['min'])} | {_s(s['median'])} | "
                      f"{_s(s['max'])} | {s['n']} | {_s(r['burst_write_s']['median'])} |")
        w("")
        _img(L, plots, "burst", "1,000-file burst")

    # (e)
    idle = res.get("idle") or {}
    if idle.get("mem_kib") or st.get("syncthing"):
        w(f"### (e) Idle CPU and RSS per node, {st.get('files') or 0:,} files")
        w("")
        w("After the initial sync and a few seconds of quiet; CPU = utime + stime over the "
          "window (% of one core), RSS = VmRSS.")
        w("")
        w("| Tool | Node | CPU % | RSS | Processes counted |")
        w("|---|---|---|---|---|")
        for name in sorted(idle.get("mem_kib") or {}):
            w(f"| dagsync agent | {name.upper()} | {idle['cpu_pct'][name]:.2f} | "
              f"{idle['mem_kib'][name]['VmRSS'] / 1024:.1f} MiB | the agent "
              f"({idle.get('window_s', 0):.0f} s window) |")
        sy = st.get("syncthing") or {}
        for name, u in sorted((sy.get("idle") or {}).items()):
            each = u["rss_kib_each"]
            w(f"| Syncthing | {name} | {u['cpu_pct']:.2f} | {u['rss_kib'] / 1024:.1f} MiB | "
              f"main {each[-1] / 1024:.1f} MiB + monitor {each[0] / 1024:.1f} MiB "
              f"({sy.get('window_s', 0):.0f} s window) |")
        ls = st.get("lsyncd") or {}
        if ls.get("idle"):
            u = ls["idle"]
            w(f"| lsyncd | A (source) | {u['cpu_pct']:.2f} | {u['rss_kib'] / 1024:.1f} MiB | "
              "lsyncd only; its rsync/ssh children exist only during a batch |")
        w("")
        _img(L, plots, "idle-rss", "idle RSS per node")

    # (f)
    wi = res.get("wire") or {}
    if wi.get("dagsync"):
        w("### (f) Bytes on the wire for a one-line edit of a 1 MB file")
        w("")
        w(f"Both sides hold the same {wi['file_bytes']:,}-byte text file; then {wi['edit']} "
          "on the sender. A counting TCP proxy on 127.0.0.1 sits between each tool and its "
          "peer's port and counts both directions (encryption and framing included) from "
          "the edit until the receiver holds the new bytes and the link has been quiet for "
          "1 s (`bench/wire.py`; `python bench/run.py --only f` re-runs just this).")
        w("")
        w("| Tool | Min | Median | Max | n | What was counted |")
        w("|---|---|---|---|---|---|")
        for k, name in (("rsync_ssh", "rsync -a over ssh"), ("syncthing", "Syncthing"),
                        ("dagsync", "dagsync")):
            r = wi.get(k)
            if not r:
                continue
            s = r["bytes"]
            extra = (f"; a no-change run costs {r['nochange_bytes']:,} bytes"
                     if "nochange_bytes" in r else "")
            w(f"| {name} | {s['min']:,.0f} | {s['median']:,.0f} | {s['max']:,.0f} | {s['n']} | "
              f"{r['what']}{extra} |")
        w("")
        _img(L, plots, "wire", "bytes on the wire")
    return L


def render_scale(res: dict[str, Any]) -> list[str]:
    sc = res.get("scale") or {}
    if not sc:
        return []
    L: list[str] = []
    w = L.append
    w("## Scale on paper: 10, 50 and 200 nodes, 100,000 files")
    w("")
    w("Not measured on real nodes: this machine has 2 cores. Two sources, kept apart.")
    w("")
    if sc.get("sim"):
        w(f"**Simulation** (`bench/sim_scale.py`: the deterministic simulation of tests/sim "
          f"with dagsync's protocol encoder, {sc['latency_ms']} ms links, no faults, "
          f"{sc['edits']} edits from random nodes, small folders). Masters as hubs = a few "
          "masters peer with each other and with every worker; workers list only the "
          "masters.")
        w("")
        w("| nodes | layout | connections | frames to connect | frames per edit | "
          "frames per edit per node | KiB per edit | relay rounds | ms to converge |")
        w("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in sc["sim"]:
            lay = _layout(r)
            w(f"| {r['nodes']} | {lay} | {r['connections']:,} | {r['connect_frames']:,} | "
              f"{r['frames']:,.0f} | {r['frames'] / r['nodes']:.1f} | {r['kib']:,.0f} | "
              f"{r['rounds']:.1f} | {r['ms']:.0f} |")
        w("")
        w("Per edit, a full mesh sends every change from every node that has it to every "
          "node it peers with: frames per edit grow with n² and each node handles ~2n "
          "frames; with hubs they grow with n and each node handles a constant ~18. The "
          "price of hubs is one more relay hop (a worker's edit reaches the other workers "
          "through a master): ~2 rounds instead of ~1, i.e. one extra round trip of the "
          "network plus one apply on the master.")
        w("")
    elif sc.get("sim_error"):
        w(f"Simulation not run: {sc['sim_error']}.")
        w("")
    if sc.get("model"):
        e = sc["index_record_bytes"]
        files = sc["files"]
        w(f"**Model for {files:,} files.** The simulation's folders are small; what grows "
          "with the number of files is the index. A node that starts empty (or lost its "
          "state) is sent the whole index by each of its peers once; an index record as "
          f"dagsync encodes it is ~{e:.0f} bytes (measured with dagsync.protocol.encode on "
          "corpus-like paths), so one peer's index of "
          f"{files:,} files is ~{files * e / 1e6:.0f} MB before SSH's encryption. After "
          "that, only changes move (per edit as in the simulation, independent of the file "
          "count), plus one full local rescan per `scan_interval` on each node.")
        w("")
        w("| nodes | layout | connections | a worker's peers | index a new worker receives "
          "| index a new master receives | every node starts empty (all links) |")
        w("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for r in sc["model"]:
            lay = _layout(r)
            w(f"| {r['nodes']} | {lay} | {r['connections']:,} | {r['worker_peers']} | "
              f"{r['worker_start_index_mb']:,.0f} MB | {r['master_start_index_mb']:,.0f} MB | "
              f"{r['cluster_cold_start_index_gb']:,.1f} GB |")
        w("")
        w(extrapolation(res, files))
        w("")
    w("**Recommendation** (as docs/operations.md): up to ~10 nodes, a full mesh (45 "
      "connections at 10 nodes, one hop, the lowest latency). From ~10 nodes on, masters as "
      "hubs: at 50 nodes a mesh needs 1,225 connections and ~100 frames per node per edit "
      "against 144 and ~17; at 200 nodes 19,900 connections (each node holding 199 SSH "
      "sessions and, after a lost state, receiving 199 copies of a 100,000-file index) "
      "against 594 and ~18 frames per node per edit. With hubs the masters carry the load "
      "(each peers with every node), so give them the CPU and network, and keep 2-3 of them "
      "so a master down does not cut the workers off.")
    return L


def extrapolation(res: dict[str, Any], files: int) -> str:
    """RSS and rescan time per node at `files`, linear from this run's measurements."""
    parts = []
    idle = res.get("idle") or {}
    pr = res.get("propagation") or {}
    small = pr.get("agent_mem_kib_before") or {}
    n_small = (pr.get("cluster_initial") or {}).get("files")
    n_big = (idle.get("cluster_initial") or {}).get("files")
    if idle.get("mem_kib") and small and n_small and n_big and n_big > n_small:
        r_big = max(v["VmRSS"] for v in idle["mem_kib"].values()) / 1024
        r_small = max(v["VmRSS"] for v in small.values()) / 1024
        slope = (r_big - r_small) / (n_big - n_small)
        if slope <= 0:
            parts.append(f"dagsync's idle RSS per node was {r_big:.0f} MiB at {n_big:,} files "
                         f"({r_small:.0f} MiB at {n_small:,}, read sooner after its initial "
                         "sync: no per-file slope to extrapolate from)")
        else:
            parts.append(f"dagsync's idle RSS per node was {r_small:.0f} MiB at {n_small:,} "
                         f"files and {r_big:.0f} MiB at {n_big:,} in this run, i.e. "
                         f"~{slope * 1024 * 1024:,.0f} bytes per file: ~"
                         f"{r_big + slope * (files - n_big):.0f} MiB at {files:,} files if "
                         "linear (an upper bound: the smaller figure was read sooner after its "
                         "initial sync)")
    rsc = res.get("rescan") or {}
    if rsc.get("scan_all_s", {}).get("n"):
        t = rsc["scan_all_s"]["median"] * files / rsc["files"]
        parts.append(f"a no-change rescan took {rsc['scan_all_s']['median']:.3f} s at "
                     f"{rsc['files']:,} files: ~{t:.1f} s at {files:,} if linear (once per "
                     "`scan_interval`, 60 s by default)")
    if not parts:
        return "(No RSS or rescan measurements in this run to extrapolate from.)"
    return "Per node, from this run: " + "; ".join(parts) + "."


def plot_links(plots: dict[str, Path], doc: Path) -> dict[str, str]:
    return {k: os.path.relpath(p, doc.parent) for k, p in plots.items()}


def _layout(row: dict[str, Any]) -> str:
    return "full mesh" if row["layout"] == "mesh" else f"{row['masters']} masters as hubs"
