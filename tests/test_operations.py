"""The operator's view: status and its exit codes, --cluster, --json schema, /healthz,
on_change hooks."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema

from tests.cluster import free_port, wait_converged, wait_until, write

SCHEMA = json.loads((Path(__file__).parent.parent / "docs/status.schema.json").read_text())
LIVE = {"scan_interval": "1s"}


def _status(node: Any, *args: str) -> tuple[int, dict[str, Any]]:
    res = node.run("status", "--json", *args)
    data = json.loads(res.stdout)
    jsonschema.validate(data, SCHEMA)
    return res.returncode, data


def test_status_exit_codes_follow_peer_and_agent_health(cluster: Any) -> None:
    nodes = cluster("a", "b", "c", extra=LIVE)
    for n in nodes.values():
        n.start()
    a, _b, c = nodes.values()
    write(a.dags / "x.py", "x = 1\n")
    wait_converged(nodes.values())
    wait_until(lambda: _status(a)[0] == 0, 10, "a healthy status")
    human = a.run("status")
    assert human.returncode == 0 and "healthy" in human.stdout and "connected" in human.stdout
    c.kill()
    wait_until(lambda: _status(a)[0] == 1, 20, "a degraded status")
    code, data = _status(a)
    peer_c = next(p for p in data["peers"] if p["name"] == "c")
    assert peer_c["state"] == "down" and peer_c["last_error"]
    assert any("peer c" in r for r in data["health"]["reasons"])
    a.stop()
    code, data = _status(a)
    assert code == 2 and data["agent"] is False
    assert "AGENT NOT RUNNING" in a.run("status").stdout


def test_cluster_view_reports_convergence_and_the_paths_that_differ(cluster: Any) -> None:
    nodes = cluster("a", "b", "c", modes={"c": "send-only"}, extra=LIVE)
    for n in nodes.values():
        n.start()
    a, b, c = nodes.values()
    write(c.dags / "shared.py", "v = 1\n")
    wait_converged(nodes.values())
    wait_until(lambda: _status(a, "--cluster")[0] == 0, 10, "a converged cluster")
    code, data = _status(a, "--cluster")
    assert len({json.dumps(d, sort_keys=True) for d in data["cluster"].values()}) == 1
    assert "converged" in a.run("status", "--cluster").stdout
    # c is send-only: a's edit never lands there, so c now differs at that path.
    write(a.dags / "shared.py", "v = 'newer on a'\n")
    wait_until(lambda: (b.dags / "shared.py").read_text() == "v = 'newer on a'\n", 10, "b")
    wait_until(lambda: _status(a, "--cluster")[0] == 1, 10, "divergence to show")
    code, data = _status(a, "--cluster", "--diff")
    assert data["cluster_diff"] == {"c": {"dags": ["shared.py"]}}
    text = a.run("status", "--cluster", "--diff").stdout
    assert "NOT converged" in text and "c differs in dags: shared.py" in text
    # A stopped node is reported as unreachable, never as converged.
    b.stop()
    code, data = _status(a, "--cluster")
    assert code == 1 and data["cluster"]["b"] is None


def test_healthz_flips_with_peers_and_folder_readability(cluster: Any) -> None:
    port = free_port()
    nodes = cluster("a", "b", extra=LIVE)
    a, b = nodes["a"], nodes["b"]
    a.extra["metrics"] = f"127.0.0.1:{port}"
    a.write_config()
    a.start()
    b.start()
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    wait_until(lambda: get("/healthz")[0] == 200, 15, "healthy")
    write(a.dags / "m.py", "m = 1\n")
    wait_converged([a, b])
    code, body = get("/metrics")
    assert code == 200 and 'dagsync_files{folder="dags"} 1.0' in body
    assert 'dagsync_peer_up{peer="b"} 1.0' in body
    b.stop()
    wait_until(lambda: get("/healthz")[0] == 503, 15, "503 with every peer down")
    assert "no peer connected" in get("/healthz")[1]
    b.start()
    wait_until(lambda: get("/healthz")[0] == 200, 15, "200 again")
    moved = a.base / "dags.away"
    shutil.move(a.dags, moved)
    try:
        wait_until(lambda: get("/healthz")[0] == 503, 15, "503 with the folder gone")
        assert "unreadable" in get("/healthz")[1]
    finally:
        shutil.move(moved, a.dags)
    wait_until(lambda: get("/healthz")[0] == 200, 15, "200 with the folder back")


def test_on_change_gets_exactly_the_changed_paths_and_a_failing_hook_is_harmless(
    cluster: Any, tmp_path: Path
) -> None:
    record = tmp_path / "hook.log"
    nodes = cluster("a", "b", extra=LIVE)
    a, b = nodes["a"], nodes["b"]
    import yaml

    cfg = yaml.safe_load(b.config.read_text())
    cfg["folders"][0]["on_change"] = f"cat >> {record}; echo '--' >> {record}"
    b.config.write_text(yaml.safe_dump(cfg))
    a.start()
    b.start()
    write(a.dags / "one.py", "1\n")
    write(a.dags / "sub/two.py", "2\n")
    wait_converged([a, b])
    wait_until(lambda: record.exists() and "sub/two.py" in record.read_text(), 10, "the hook")
    seen = {ln for ln in record.read_text().splitlines() if ln != "--"}
    assert seen == {"one.py", "sub/two.py"}
    # A failing hook: logged, and syncing goes on.
    cfg["folders"][0]["on_change"] = "exit 3"
    b.config.write_text(yaml.safe_dump(cfg))
    b.stop()
    b.start()
    write(a.dags / "three.py", "3\n")
    wait_converged([a, b])
    wait_until(lambda: "on_change hook exited 3" in b.log.read_text(), 10, "the hook failure")
    write(a.dags / "four.py", "4\n")
    wait_converged([a, b])
    assert b.proc is not None and b.proc.poll() is None
