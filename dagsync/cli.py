"""Command line. The only module that prints; maps errors to exit codes (SPEC)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from dagsync import __version__
from dagsync.config import Config, load_config
from dagsync.errors import AgentNotRunning, DagsyncError, UsageError
from dagsync.launch import gc_paused, settle_startup
from dagsync.leases import ignore_sigio
from dagsync.logs import setup_logging

T = TypeVar("T")


class Ctx:
    def __init__(self, config_path: Path | None, debug: bool) -> None:
        self.config_path = config_path
        self.debug = debug

    def config(self) -> Config:
        return load_config(self.config_path)


def _run(ctx: Ctx, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(make())
    except DagsyncError as exc:
        fail(ctx, exc)
    except KeyboardInterrupt:
        sys.exit(130)


def _exit_now(code: int) -> NoReturn:
    """End a finished one-shot command without the interpreter's teardown: unloading
    asyncssh, cryptography and the rest took 40-100 ms at each `dagsync sync`, for
    nothing an exiting process needs. The command has closed its index, sockets and
    files itself; logs and output are flushed here. Not for the agent, whose exit time
    nobody waits for and whose threads end on their own."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: as at a normal exit
            stream.flush()
    os._exit(code)


def fail(ctx: Ctx, exc: DagsyncError) -> NoReturn:
    if ctx.debug:
        raise exc
    click.echo(f"dagsync: {exc}", err=True)
    sys.exit(exc.exit_code)


def config_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config_path", type=click.Path(path_type=Path), default=None,
        help="Config file (default: $DAGSYNC_CONFIG or /etc/dagsync/dagsync.yaml).",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dagsync")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--log-level", default="info",
              type=click.Choice(["debug", "info", "warning", "error"]), show_default=True)
@click.option("--log-format", default="human", type=click.Choice(["human", "json"]),
              show_default=True)
@click.pass_context
def main(ctx: click.Context, debug: bool, log_level: str, log_format: str) -> None:
    """Keep the DAG folders of an Airflow cluster identical on every node."""
    setup_logging("debug" if debug else log_level, log_format)
    ignore_sigio()
    ctx.obj = {"debug": debug}


def _ctx(click_ctx: click.Context, config_path: Path | None) -> Ctx:
    return Ctx(config_path, bool(click_ctx.obj and click_ctx.obj.get("debug")))


def _load(ctx: Ctx) -> Config:
    try:
        return ctx.config()
    except DagsyncError as exc:
        fail(ctx, exc)


# --- init ------------------------------------------------------------------------------

STARTER_CONFIG = """\
# dagsync configuration written by `dagsync init`; see config.example.yaml for every key.
node:
  name: {name}
  listen: 0.0.0.0:8022
  key: {key}
  state_dir: {state_dir}
folders:
  - id: dags
    path: /opt/airflow/dags
    mode: send-receive
peers: []
"""


@main.command()
@config_option
@click.option("--name", help="Node name, when no config exists yet (written to a starter config).")
@click.pass_context
def init(click_ctx: click.Context, config_path: Path | None, name: str | None) -> None:
    """Create this node's key and state dir; print the line peers paste into their config."""
    from dagsync import transport
    from dagsync.config import default_config_path

    ctx = _ctx(click_ctx, config_path)
    path = config_path or default_config_path()
    if not path.exists():
        if not name:
            fail(ctx, UsageError(f"{path}: no config yet; pass --name NAME to write a starter "
                                 "one, or copy config.example.yaml there"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(STARTER_CONFIG.format(name=name, key=path.parent / "node_key",
                                              state_dir="/var/lib/dagsync"))
        click.echo(f"wrote starter config {path}; edit folders and peers", err=True)
    cfg = _load(Ctx(path, ctx.debug))
    if name and name != cfg.node.name:
        fail(ctx, UsageError(f"{path}: node.name is {cfg.node.name!r}, not {name!r}"))
    try:
        cfg.node.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        if cfg.node.key.exists():
            key = transport.load_node_key(cfg.node.key)
            os.chmod(cfg.node.key, 0o600)
        else:
            key = transport.generate_node_key(cfg.node.key)
            click.echo(f"created node key {cfg.node.key}", err=True)
    except OSError as exc:
        fail(ctx, DagsyncError(f"{exc.filename}: {exc.strerror}"))
    host = cfg.node.listen_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    click.echo("# add this to the peers: list of every other node")
    click.echo(f"- name: {cfg.node.name}")
    click.echo(f"  address: {host}:{cfg.node.listen_port}")
    click.echo(f'  public_key: "{transport.public_key_line(key)}"')


# --- agent, sync, serve ----------------------------------------------------------------


@main.command()
@config_option
@click.pass_context
def agent(click_ctx: click.Context, config_path: Path | None) -> None:
    """Run the daemon in the foreground (stop with SIGTERM, reload with SIGHUP)."""
    with gc_paused():
        from dagsync.agent import Agent

    ctx = _ctx(click_ctx, config_path)
    cfg = _load(ctx)
    settle_startup()
    _run(ctx, lambda: Agent(cfg).run())


@main.command()
@config_option
@click.option("--peer", "peers", multiple=True, help="Only this peer (repeatable).")
@click.option("--dry-run", is_flag=True, help="List what would move; change nothing.")
@click.option("--strict", is_flag=True, help="Exit 1 when any peer could not be reached.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds per peer.")
@click.pass_context
def sync(click_ctx: click.Context, config_path: Path | None, peers: tuple[str, ...],
         dry_run: bool, strict: bool, timeout: float) -> None:
    """One round with every reachable peer, then exit (for cron)."""
    with gc_paused():
        from dagsync.oneshot import run_sync

    ctx = _ctx(click_ctx, config_path)
    cfg = _load(ctx)
    def show(line: str) -> None:
        sys.stderr.write("\r\033[K" + line)
        sys.stderr.flush()

    progress = show if sys.stderr.isatty() else None
    report = _run(ctx, lambda: run_sync(cfg, list(peers), dry_run=dry_run, timeout=timeout,
                                        progress=progress))
    for direction, action, path in sorted(report.would):
        click.echo(f"{direction}: {action} {path}")
    for name in sorted(report.in_sync):
        click.echo(f"{name}: in sync" + (" (round done by the local agent)"
                                         if report.via_agent else ""), err=True)
    for name, reason in sorted(report.down.items()):
        click.echo(f"dagsync: warning: peer {name} not synced: {reason}", err=True)
    _exit_now(1 if report.down and strict else 0)


@main.command()
@config_option
@click.option("--stdio", is_flag=True, required=True, help="Speak the protocol on stdin/stdout.")
@click.option("--peer", default=None, help="Name of the calling peer.")
@click.pass_context
def serve(click_ctx: click.Context, config_path: Path | None, stdio: bool,
          peer: str | None) -> None:
    """Serve one peer on stdin/stdout: the forced command for ssh:// peers."""
    with gc_paused():
        from dagsync.oneshot import serve_stdio

    ctx = _ctx(click_ctx, config_path)
    cfg = _load(ctx)
    _run(ctx, lambda: serve_stdio(cfg, peer))


# --- status ----------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cluster", is_flag=True, help="Also compare digests with every peer.")
@click.option("--diff", is_flag=True, help="With --cluster: list the paths that differ.")
@click.pass_context
def status(click_ctx: click.Context, config_path: Path | None, as_json: bool,
           cluster: bool, diff: bool) -> None:
    """This node's view: folders, peers, conflicts. Exit 0 healthy, 1 degraded, 2 critical."""
    from dagsync.oneshot import control_request
    from dagsync.status import health, offline_status, render

    ctx = _ctx(click_ctx, config_path)
    cfg = _load(ctx)
    try:
        data = asyncio.run(control_request(
            cfg, {"cmd": "status", "cluster": cluster or diff, "diff": diff}, timeout=15))
    except AgentNotRunning as exc:
        data = offline_status(cfg, str(exc))
    except DagsyncError as exc:
        fail(ctx, exc)
    code, reasons = health(data)
    data["health"] = {"code": code, "reasons": reasons}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        click.echo(render(data))
    sys.exit(code)


# --- conflicts -------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@config_option
@click.pass_context
def conflicts(click_ctx: click.Context, config_path: Path | None) -> None:
    """The conflict archive: losing versions kept by last-writer-wins."""
    click_ctx.obj["config_path"] = config_path
    if click_ctx.invoked_subcommand is None:
        click_ctx.invoke(conflicts_list)


def _archive(
    click_ctx: click.Context, config_path: Path | None = None
) -> tuple[Ctx, Config, Any]:
    from dagsync.archive import ConflictArchive

    ctx = _ctx(click_ctx, config_path or click_ctx.obj.get("config_path"))
    cfg = _load(ctx)
    return ctx, cfg, ConflictArchive(cfg.node.state_dir)


@conflicts.command("list")
@config_option
@click.pass_context
def conflicts_list(click_ctx: click.Context, config_path: Path | None = None) -> None:
    """List archived losing versions."""
    _, _, archive = _archive(click_ctx, config_path)
    entries = archive.list()
    if not entries:
        click.echo("no conflicts")
        return
    click.echo(f"{'ID':>4}  {'TIME (UTC)':<24} {'FOLDER/PATH':<40} {'LOSER':<12} {'WINNER':<12}")
    for e in entries:
        mark = "" if e.seen else " *"
        click.echo(f"{e.id:>4}  {e.archived_at:<24} {e.folder + '/' + e.path:<40} "
                   f"{e.loser_origin:<12} {e.winner_origin:<12}{mark}")
    archive.mark_seen(e.id for e in entries)


@conflicts.command("show")
@click.argument("entry_id", type=int)
@click.option("--diff", is_flag=True, help="Show a diff against the current file instead.")
@config_option
@click.pass_context
def conflicts_show(click_ctx: click.Context, entry_id: int, diff: bool,
                   config_path: Path | None) -> None:
    """Print a losing version (or how it differs from the current file)."""
    import difflib

    ctx, cfg, archive = _archive(click_ctx, config_path)
    try:
        entry = archive.get(entry_id)
        data = archive.read(entry_id)
    except KeyError:
        fail(ctx, UsageError(f"no conflict #{entry_id}; see `dagsync conflicts list`"))
    archive.mark_seen([entry_id])
    if not diff:
        sys.stdout.buffer.write(data)
        return
    try:
        current_path = cfg.folder(entry.folder).path / entry.path
        current = current_path.read_bytes()
    except (KeyError, OSError):
        current, current_path = b"", Path("/dev/null")
    lines = difflib.unified_diff(
        data.decode(errors="replace").splitlines(keepends=True),
        current.decode(errors="replace").splitlines(keepends=True),
        f"conflict #{entry_id} ({entry.loser_origin}, lost)",
        f"{current_path} (current)",
    )
    sys.stdout.write("".join(lines))


@conflicts.command("restore")
@click.argument("entry_id", type=int)
@config_option
@click.pass_context
def conflicts_restore(click_ctx: click.Context, entry_id: int, config_path: Path | None) -> None:
    """Make a losing version the newest version again (it then propagates)."""
    import time

    from dagsync import fsio
    from dagsync.oneshot import control_request

    ctx, cfg, archive = _archive(click_ctx, config_path)
    try:
        entry = archive.get(entry_id)
        data = archive.read(entry_id)
    except KeyError:
        fail(ctx, UsageError(f"no conflict #{entry_id}; see `dagsync conflicts list`"))
    try:
        folder = cfg.folder(entry.folder)
    except KeyError:
        fail(ctx, UsageError(f"conflict #{entry_id} belongs to folder {entry.folder!r}, "
                             "which is no longer configured"))
    try:
        fsio.write_file(folder.path, entry.path, data, entry.mode, time.time_ns())
    except (OSError, DagsyncError) as exc:
        fail(ctx, DagsyncError(f"cannot restore {entry.folder}/{entry.path}: {exc}"))
    archive.mark_seen([entry_id])
    try:
        asyncio.run(control_request(cfg, {"cmd": "scan"}))
        how = "the agent publishes it now"
    except DagsyncError:
        how = "it propagates at the next `dagsync sync` or agent scan"
    click.echo(f"restored conflict #{entry_id} to {folder.path / entry.path}; {how}")


# --- demo ------------------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temp dir for inspection.")
@click.pass_context
def demo(click_ctx: click.Context, keep: bool) -> None:
    """A throw-away 3-node cluster on loopback: propagation, a conflict, a node catching up."""
    from dagsync.demo import run_demo

    ctx = _ctx(click_ctx, None)
    code = _run(ctx, lambda: run_demo(keep=keep, echo=click.echo))
    sys.exit(code)


if __name__ == "__main__":
    main()
