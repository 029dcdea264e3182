"""`dagsync demo` end to end, as a user runs it: a real subprocess, real agents."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dagsync", "demo", *args],
                          capture_output=True, text=True, timeout=120)


def demo_dir(out: str) -> Path:
    m = re.search(r"a 3-node cluster on 127\.0\.0\.1, in (\S+)", out)
    assert m, out
    return Path(m.group(1))


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (read from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_demo_shows_every_step_and_cleans_up() -> None:
    res = run_demo()
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "FAILED" not in out
    # 1. propagation, with a time per worker
    assert "1. A new DAG propagates" in out
    assert re.search(r"worker1: arrived after \d+ ms", out), out
    assert re.search(r"worker2: arrived after \d+ ms", out), out
    # 2. the conflict: one winner, the loser archived and listed, no copy in a DAG folder
    assert "2. A conflict" in out
    m = re.search(r"(worker[12])'s version won", out)
    assert m, out
    loser = "worker1" if m.group(1) == "worker2" else "worker2"
    assert f"{loser}'s losing version is kept outside the DAG folder" in out
    assert "$ dagsync conflicts list" in out
    assert re.search(rf"team_report\.py.*\b{loser}\b.*\b{m.group(1)}\b", out), out
    assert "no conflict copy in any DAG folder" in out
    # 3. a node down, stale, back and caught up
    assert "3. A node goes down" in out
    assert "worker2: stopped" in out
    assert "worker2 is stale: missing inventory_sync.py" in out
    assert re.search(r"worker2: caught up \d+ ms later", out), out
    # 4. status --cluster, healthy and converged
    assert "4. dagsync status --cluster on master1" in out
    assert "exit code 0" in out
    assert "cluster: converged" in out
    assert "healthy" in [line.strip() for line in out.splitlines()]
    # 5. agents stopped, temp dir gone
    assert "5. Cleanup" in out
    assert re.search(r"stopped master1 \(exit code 0\), worker1 \(exit code 0\), "
                     r"worker2 \(exit code 0\)", out), out
    base = demo_dir(out)
    assert f"removed {base}" in out
    assert not base.exists()
    assert processes_mentioning(str(base)) == []
    assert "demo finished in" in out


def test_demo_keep_leaves_the_cluster_files_for_inspection() -> None:
    res = run_demo("--keep")
    base = demo_dir(res.stdout)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"kept {base} (--keep)" in res.stdout
        for name in ("master1", "worker1", "worker2"):
            assert (base / name / "dagsync.yaml").is_file()
            assert (base / name / "agent.log").is_file()
            assert not (base / name / "state" / "agent.sock").exists()  # agent stopped
        assert sorted(p.name for p in (base / "master1" / "dags").iterdir()) == [
            "inventory_sync.py", "sales_etl.py"]
        assert processes_mentioning(str(base)) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)
