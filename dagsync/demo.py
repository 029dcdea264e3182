"""`dagsync demo`: a throw-away 3-node cluster on loopback (SPEC "Commands").

Three real agents (`master1`, `worker1`, `worker2`) run as subprocesses, each with its
own config, key, state dir, DAG folder and log in one temp dir. The demo shows a DAG
propagating, a conflict resolved by last-writer-wins, a node going down and catching
up, and `status --cluster`; then it stops the agents (always, by PID) and cleans up.
Only `echo` prints; the agents' logs go to files, shown on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import dagsync
from dagsync.archive import ConflictArchive
from dagsync.config import Config, load_config
from dagsync.errors import DagsyncError
from dagsync.localnode import LocalNode, free_port
from dagsync.oneshot import control_request

Echo = Callable[[str], None]
Snapshot = dict[str, tuple[bytes, int, int]]  # relpath -> (content, mode bits, mtime_ns)

NAMES = ("master1", "worker1", "worker2")
FOLDER_ID = "dags"
STEP_TIMEOUT = 30.0  # any single wait longer than this fails the demo
ARRIVAL_POLL = 0.002
POLL = 0.02
STOP_GRACE = 10.0  # an agent stops in ~2 s; a loaded CI box can need more before SIGKILL
LOG_TAIL = 15

SALES_ETL = '''\
"""Nightly sales ETL: extract the day's orders, load them into the warehouse."""

from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.operators.python import PythonOperator


def extract_orders(ds: str, **_: object) -> None:
    print(f"extracting orders for {ds}")


with DAG(
    dag_id="sales_etl",
    schedule="0 2 * * *",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    default_args={"owner": "data-eng", "retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["sales"],
) as dag:
    extract = PythonOperator(task_id="extract_orders", python_callable=extract_orders)
    load = BashOperator(task_id="load_warehouse", bash_command="echo loading {{ ds }}")
    extract >> load
'''

SALES_ETL_EDITED = SALES_ETL.replace('"retries": 2', '"retries": 5').replace(
    'load = BashOperator(task_id="load_warehouse", bash_command="echo loading {{ ds }}")',
    'load = BashOperator(task_id="load_warehouse", bash_command="echo loading {{ ds }}")\n'
    '    notify = BashOperator(task_id="notify", bash_command="echo done")',
).replace("extract >> load", "extract >> load >> notify")

TEAM_REPORT = '''\
"""Weekly team report, {note}."""

from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(dag_id="team_report", schedule="{schedule}", start_date=datetime(2024, 1, 1),
         catchup=False) as dag:
    BashOperator(task_id="render", bash_command="echo rendering report")
'''
TEAM_REPORT_W1 = TEAM_REPORT.format(note="edited on worker1", schedule="@weekly")
TEAM_REPORT_W2 = TEAM_REPORT.format(note="edited on worker2", schedule="@daily")

INVENTORY_SYNC = '''\
"""Hourly inventory sync from the ERP."""

from datetime import datetime

from airflow import DAG
from airflow.operators.bash import BashOperator

with DAG(dag_id="inventory_sync", schedule="@hourly", start_date=datetime(2024, 1, 1),
         catchup=False) as dag:
    BashOperator(task_id="pull_erp", bash_command="echo pulling inventory")
'''


class DemoFailed(Exception):
    """A step did not complete; the message says which."""


@dataclass
class DemoNode(LocalNode):
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False  # started and not stopped on purpose: it must stay up

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def load(self) -> Config:
        return load_config(self.config)

    def start(self) -> None:
        self.wanted = True
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # left by a killed agent: wait for the new one's
        with self.log.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dagsync", "--log-level", "warning", "agent",
                 "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, env=_child_env(),
            )

    def terminate(self) -> None:
        """SIGTERM, once, by PID; the agent is no longer expected to be up."""
        self.wanted = False
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def reap(self, grace: float) -> int | None:
        """Wait `grace` seconds for the exit, then SIGKILL; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        return proc.returncode

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit code (None if unknown)."""
        self.terminate()
        return self.reap(grace)


def _child_env() -> dict[str, str]:
    """The environment for child processes: this very dagsync importable first."""
    env = dict(os.environ)
    root = str(Path(dagsync.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _snapshot(root: Path) -> Snapshot:
    out: Snapshot = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for fn in filenames:
            p = Path(dirpath) / fn
            try:
                st = p.lstat()
                data = p.read_bytes()
            except OSError:
                continue  # replaced or removed while we looked; the next poll sees it
            out[p.relative_to(root).as_posix()] = (data, st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _indent(text: str, prefix: str = "     ") -> str:
    return "\n".join((prefix + line).rstrip() for line in text.rstrip().splitlines())


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"


class Demo:
    def __init__(self, base: Path, echo: Echo) -> None:
        self.base = base
        self.echo = echo
        self.nodes: dict[str, DemoNode] = {}

    # --- building and waiting --------------------------------------------------------

    def build(self) -> None:
        for name in NAMES:
            node = DemoNode(name, self.base / name, free_port())
            node.create()
            self.nodes[name] = node
        for node in self.nodes.values():
            node.write_config([p.peer_entry() for p in self.nodes.values() if p is not node],
                              folder_id=FOLDER_ID, scan_interval="5s")

    def _check_alive(self) -> None:
        """DemoFailed when an agent that should be up has exited."""
        for node in self.nodes.values():
            if node.wanted and node.proc is not None and node.proc.poll() is not None:
                raise DemoFailed(f"agent {node.name} exited with code {node.proc.returncode}")

    async def wait(self, pred: Callable[[], bool], what: str, *,
                   interval: float = POLL) -> float:
        """Poll until pred() holds; the seconds it took. DemoFailed after STEP_TIMEOUT."""
        start = time.monotonic()
        while True:
            if pred():
                return time.monotonic() - start
            self._check_alive()
            if time.monotonic() - start > STEP_TIMEOUT:
                raise DemoFailed(f"timed out after {STEP_TIMEOUT:.0f} s waiting for {what}")
            await asyncio.sleep(interval)

    async def wait_async(self, pred: Callable[[], Awaitable[bool]], what: str) -> float:
        start = time.monotonic()
        while True:
            if await pred():
                return time.monotonic() - start
            self._check_alive()
            if time.monotonic() - start > STEP_TIMEOUT:
                raise DemoFailed(f"timed out after {STEP_TIMEOUT:.0f} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def start_agents(self, nodes: list[DemoNode]) -> float:
        """Start agents and wait for their control sockets; the seconds it took."""
        start = time.monotonic()
        for node in nodes:
            node.start()
        for node in nodes:
            await self.wait(node.socket.exists, f"agent {node.name} to start")
        return time.monotonic() - start

    async def all_connected(self, nodes: list[DemoNode]) -> bool:
        for node in nodes:
            try:
                reply = await control_request(node.load(), {"cmd": "status"}, timeout=5)
            except (DagsyncError, OSError, TimeoutError, ValueError):
                return False
            wanted = {n.name for n in nodes if n is not node}
            connected = {p["name"] for p in reply.get("peers", [])
                         if p.get("state") == "connected"}
            if not wanted <= connected:
                return False
        return True

    async def run_cli(self, *args: str) -> tuple[int, str, str]:
        """`python -m dagsync ARGS` as a subprocess: (exit code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dagsync", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_child_env(),
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), STEP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DemoFailed(f"`dagsync {args[0]}` did not finish within "
                             f"{STEP_TIMEOUT:.0f} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def differences(self, node: DemoNode, reference: DemoNode) -> list[str]:
        mine, ref = _snapshot(node.dags), _snapshot(reference.dags)
        out = [f"missing {p}" for p in sorted(ref.keys() - mine.keys())]
        out += [f"old version of {p}" for p in sorted(ref.keys() & mine.keys())
                if mine[p] != ref[p]]
        out += [f"still has {p} (deleted on {reference.name})"
                for p in sorted(mine.keys() - ref.keys())]
        return out

    def agree(self, nodes: list[DemoNode]) -> bool:
        snaps = [_snapshot(n.dags) for n in nodes]
        return all(s == snaps[0] for s in snaps[1:])

    # --- the steps ---------------------------------------------------------------------

    async def step0_start(self) -> None:
        self.build()
        nodes = list(self.nodes.values())
        self.echo(f"dagsync demo: a 3-node cluster on 127.0.0.1, in {self.base}")
        took = await self.start_agents(nodes)
        for node in nodes:
            assert node.proc is not None
            self.echo(f"   {node.name:<8} 127.0.0.1:{node.port:<5}  pid {node.proc.pid:<7} "
                      f"folder {node.dags}")
        connected = await self.wait_async(lambda: self.all_connected(nodes),
                                          "the agents to connect to each other")
        self.echo(f"   agents up in {_ms(took)}, full mesh connected after {_ms(connected)} more")

    async def step1_propagate(self) -> None:
        m, w1, w2 = (self.nodes[n] for n in NAMES)
        self.echo("")
        self.echo("1. A new DAG propagates from master1 to the workers")
        data = SALES_ETL.encode()
        start = time.monotonic()
        (m.dags / "sales_etl.py").write_bytes(data)
        pending = {w1.name: w1, w2.name: w2}
        arrived: dict[str, float] = {}
        while pending:
            for name, node in list(pending.items()):
                if _read(node.dags / "sales_etl.py") == data:
                    arrived[name] = time.monotonic() - start
                    del pending[name]
            if not pending:
                break
            self._check_alive()
            if time.monotonic() - start > STEP_TIMEOUT:
                raise DemoFailed(f"sales_etl.py did not reach {', '.join(pending)} within "
                                 f"{STEP_TIMEOUT:.0f} s")
            await asyncio.sleep(ARRIVAL_POLL)
        self.echo(f"   master1: wrote dags/sales_etl.py ({len(data)} bytes, an Airflow DAG)")
        for name, secs in arrived.items():
            self.echo(f"   {name}: arrived after {_ms(secs)}, whole and byte-identical")
        took = await self.wait(lambda: self.agree([m, w1, w2]), "content, mode and mtime to match")
        self.echo(f"   content, mode bits and mtime identical on all 3 nodes "
                  f"({_ms(max(arrived.values()) + took)})")

    async def step2_conflict(self) -> None:
        m, w1, w2 = (self.nodes[n] for n in NAMES)
        nodes = [m, w1, w2]
        self.echo("")
        self.echo("2. A conflict: worker1 and worker2 write the same new file at the same moment")
        contents = {w1.name: TEAM_REPORT_W1.encode(), w2.name: TEAM_REPORT_W2.encode()}
        start = time.monotonic()
        (w1.dags / "team_report.py").write_bytes(contents[w1.name])
        (w2.dags / "team_report.py").write_bytes(contents[w2.name])
        gap = time.monotonic() - start
        self.echo("   worker1: wrote dags/team_report.py (schedule=\"@weekly\")")
        self.echo(f"   worker2: wrote dags/team_report.py (schedule=\"@daily\"), "
                  f"{gap * 1000:.1f} ms later")

        def settled() -> bool:
            got = [_read(n.dags / "team_report.py") for n in nodes]
            return got[0] in contents.values() and len(set(got)) == 1 and self.agree(nodes)

        took = await self.wait(settled, "all 3 nodes to agree on team_report.py")
        final = (m.dags / "team_report.py").read_bytes()
        winner = next(name for name, data in contents.items() if data == final)
        loser = next(name for name in contents if name != winner)
        self.echo(f"   all 3 nodes agree after {_ms(took)}: {winner}'s version won "
                  "(last writer wins)")

        # Where the losing bytes went: every node's archive, read directly (no side effect).
        holders: list[str] = []
        for node in nodes:
            archive = ConflictArchive(node.state)
            for entry in archive.list():
                if entry.path != "team_report.py":
                    continue
                if archive.read(entry.id) != contents[loser]:
                    raise DemoFailed(f"{node.name}'s conflict archive holds other bytes than "
                                     f"{loser}'s losing version of team_report.py")
                holders.append(node.name)
                break
        if not holders:
            raise DemoFailed(f"{loser}'s losing version of team_report.py is in no node's "
                             "conflict archive: its content is lost (SPEC guarantee 2)")
        holders.sort(key=lambda name: name != loser)  # the losing node's own archive first
        self.echo(f"   {loser}'s losing version is kept outside the DAG folder, in the "
                  f"conflict archive of {', '.join(holders)}:")
        for i, name in enumerate(holders):
            # Listing also marks the entry seen, so `status` no longer counts it.
            code, out, err = await self.run_cli(
                "conflicts", "--config", str(self.nodes[name].config), "list")
            if code != 0 or "team_report.py" not in out:
                raise DemoFailed(f"`dagsync conflicts list` on {name} does not list "
                                 f"team_report.py (exit {code}): {err.strip() or out.strip()}")
            if i == 0:
                self.echo(f"     $ dagsync conflicts list        # on {name}")
                self.echo(_indent(out, "     "))
            elif name == winner:
                self.echo(f"   ({name}, the winning node, archived it as well)")
            else:
                self.echo(f"   ({name} had {loser}'s version before the winner arrived, "
                          "so it archived it as well)")
        expected = {"sales_etl.py", "team_report.py"}
        for node in nodes:
            present = set(_snapshot(node.dags))
            if present != expected:
                raise DemoFailed(f"{node.name}'s DAG folder holds {sorted(present)}, "
                                 f"expected {sorted(expected)}")
        self.echo("   no conflict copy in any DAG folder: each holds exactly "
                  + ", ".join(sorted(expected)) + " (Airflow never sees a second DAG)")

    async def step3_catch_up(self) -> None:
        m, w1, w2 = (self.nodes[n] for n in NAMES)
        self.echo("")
        self.echo("3. A node goes down, misses changes, and catches up")
        assert w2.proc is not None
        pid = w2.proc.pid
        code = w2.stop()
        self.echo(f"   worker2: stopped (SIGTERM to pid {pid}, exit code {code})")
        (m.dags / "inventory_sync.py").write_bytes(INVENTORY_SYNC.encode())
        (m.dags / "sales_etl.py").write_bytes(SALES_ETL_EDITED.encode())
        (m.dags / "team_report.py").unlink()
        self.echo("   master1: added inventory_sync.py, edited sales_etl.py, "
                  "deleted team_report.py")
        took = await self.wait(lambda: self.agree([m, w1]), "worker1 to get master1's changes")
        self.echo(f"   worker1: up to date after {_ms(took)} (a down node stops nobody)")
        stale = self.differences(w2, m)
        if not stale:
            raise DemoFailed("worker2 was down but its DAG folder already matches master1")
        self.echo("   worker2 is stale: " + "; ".join(stale))
        start = time.monotonic()
        ready = await self.start_agents([w2])
        assert w2.proc is not None
        synced = await self.wait(lambda: self.agree([m, w1, w2]), "worker2 to catch up")
        self.echo(f"   worker2: restarted (pid {w2.proc.pid}), agent ready after {_ms(ready)}")
        self.echo(f"   worker2: caught up {_ms(synced)} later, {_ms(time.monotonic() - start)} "
                  "after the restart; all 3 nodes identical again")

    async def step4_status(self) -> None:
        m = self.nodes["master1"]
        self.echo("")
        self.echo("4. dagsync status --cluster on master1")
        last: tuple[int, str, str] = (-1, "", "")

        async def healthy() -> bool:
            nonlocal last
            last = await self.run_cli("status", "--config", str(m.config), "--cluster")
            return last[0] == 0

        try:
            await self.wait_async(healthy, "`dagsync status --cluster` to report healthy")
        except DemoFailed as exc:
            raise DemoFailed(f"{exc}; last exit code {last[0]}:\n{last[1]}{last[2]}") from None
        self.echo(f"     $ dagsync status --cluster      # on master1, exit code {last[0]}")
        self.echo(_indent(last[1], "     "))

    def stop_all(self) -> list[str]:
        """Stop every agent started here, by PID: SIGTERM to all, SIGKILL after 5 s."""
        running = [n for n in self.nodes.values() if n.running()]
        for node in running:
            node.terminate()
        deadline = time.monotonic() + STOP_GRACE
        report = []
        for node in running:
            code = node.reap(max(0.0, deadline - time.monotonic()))
            report.append(f"{node.name} (exit code {code})")
        return report

    def log_tails(self) -> None:
        for node in self.nodes.values():
            self.echo(f"   --- last lines of {node.log} ---")
            self.echo(_indent(_tail(node.log), "   "))


async def run_demo(*, keep: bool, echo: Echo) -> int:
    """Run the demo; 0 when every step worked, 1 otherwise."""
    base = Path(tempfile.mkdtemp(prefix="dagsync-demo-"))
    demo = Demo(base, echo)
    began = time.monotonic()
    code = 1
    failed = True
    try:
        await demo.step0_start()
        await demo.step1_propagate()
        await demo.step2_conflict()
        await demo.step3_catch_up()
        await demo.step4_status()
        code, failed = 0, False
    except (DemoFailed, DagsyncError, OSError, subprocess.SubprocessError) as exc:
        echo("")
        echo(f"FAILED: {exc}")
        demo.log_tails()
    except (KeyboardInterrupt, asyncio.CancelledError):
        echo("")
        echo("interrupted; stopping the agents")
        failed = False
        raise
    finally:
        echo("")
        echo("5. Cleanup")
        stopped = demo.stop_all()
        echo("   stopped " + (", ".join(stopped) if stopped else "no agent (none running)"))
        if keep or failed:
            why = "--keep" if keep else "for inspection after the failure"
            echo(f"   kept {base} ({why}): per node dagsync.yaml, node_key, dags/, state/, "
                 "agent.log")
        else:
            shutil.rmtree(base, ignore_errors=True)
            echo(f"   removed {base}")
        if code == 0:
            echo("")
            echo(f"demo finished in {time.monotonic() - began:.1f} s")
    return code
