"""Configuration: YAML text -> frozen, validated dataclasses (SPEC "Configuration").

Every problem is a `ConfigError(file, key_path, problem)`: the key path names the
offending key (`node.name`, `folders[1].mode`, `peers[0].public_key`) and the problem
is one line saying what is wrong and what would be right. Only `load_config` touches
the disk; `parse_config` is pure (relative paths are resolved lexically against the
config file's directory, symlinks are not followed).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from dagsync.errors import ConfigError
from dagsync.model import FolderMode

DEFAULT_CONFIG_PATH = Path("/etc/dagsync/dagsync.yaml")
DEFAULT_LISTEN = "0.0.0.0:8022"
DEFAULT_KEY = Path("/etc/dagsync/node_key")
DEFAULT_STATE_DIR = Path("/var/lib/dagsync")
DEFAULT_AGENT_PORT = 8022
DEFAULT_SSH_PORT = 22
DEFAULT_SCAN_INTERVAL = 60.0
DEFAULT_SETTLE = 0.020
DEFAULT_MAX_FILE_SIZE = 256 * 1024**2

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_HOST_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_ED25519_BLOB_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
_ED25519_BLOB_LEN = len(_ED25519_BLOB_PREFIX) + 32

_TOP_KEYS = (
    "node", "folders", "peers", "scan_interval", "settle", "max_file_size", "metrics",
    "conflicts",
)
_CONFLICT_KEYS = ("keep", "max_age")
DEFAULT_CONFLICTS_KEEP = 1000
DEFAULT_CONFLICTS_MAX_AGE = 90 * 86400.0
_NODE_KEYS = ("name", "listen", "key", "state_dir")
_FOLDER_KEYS = ("id", "path", "mode", "ignore", "on_change")
_PEER_KEYS = ("name", "address", "public_key")
_MODES = ", ".join(m.value for m in FolderMode)


def default_config_path() -> Path:
    """$DAGSYNC_CONFIG if set (and not empty), else /etc/dagsync/dagsync.yaml."""
    env = os.environ.get("DAGSYNC_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    listen_host: str  # IPv6 without brackets, ready for bind()
    listen_port: int
    key: Path
    state_dir: Path


@dataclass(frozen=True, slots=True)
class FolderConfig:
    id: str
    path: Path
    mode: FolderMode
    ignore: tuple[str, ...]
    on_change: str | None = None


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """A peer and how to reach it.

    `address` is the text from the file. `via_ssh` is True for "ssh://user@host[:port]"
    (the peer's OpenSSH server, port 22 by default, `ssh_user` set); otherwise the
    address is "host[:port]" of the peer's agent (embedded server, port 8022 by
    default) and `ssh_user` is None. `host` is bare (IPv6 without brackets).
    `public_key` is normalised to "ssh-ed25519 <base64>" (comment dropped).
    """

    name: str
    address: str
    public_key: str | None
    host: str
    port: int
    ssh_user: str | None
    via_ssh: bool


@dataclass(frozen=True, slots=True)
class ConflictRetention:
    """How long the conflict archive keeps losing versions (oldest pruned first)."""

    keep: int = DEFAULT_CONFLICTS_KEEP  # at most this many entries
    max_age: float = DEFAULT_CONFLICTS_MAX_AGE  # seconds


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    node: NodeConfig
    folders: tuple[FolderConfig, ...]
    peers: tuple[PeerConfig, ...]
    scan_interval: float  # seconds
    settle: float  # seconds
    max_file_size: int  # bytes
    metrics: tuple[str, int] | None = None
    conflicts: ConflictRetention = ConflictRetention()

    def folder(self, folder_id: str) -> FolderConfig:
        for f in self.folders:
            if f.id == folder_id:
                return f
        raise KeyError(folder_id)

    def peer(self, name: str) -> PeerConfig | None:
        for p in self.peers:
            if p.name == name:
                return p
        return None


# --- durations and sizes -------------------------------------------------------------

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)\s*")
_DURATION_FULL = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")


def parse_duration(value: object) -> float:
    """Seconds from "60s", "20ms", "5m", "1h", "1.5s", "1m30s" or a plain number of seconds.

    Raises ValueError for anything else (booleans, NaN/infinity, unknown units).
    Negative plain numbers are returned as is; range checks belong to the caller.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"not a finite duration: {value!r}")
        return seconds
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(_NUMBER, text):
            return float(text)
        if _DURATION_FULL.fullmatch(text):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"not a duration: {value!r} (use e.g. 60s, 20ms, 5m, 1h)")


def parse_size(value: object) -> int:
    """Bytes from "256MiB", "1GiB", "512KiB", "10MB", "100", "100B" or a plain integer.

    Units are case-insensitive: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB
    (powers of 1024). Fractions are allowed ("1.5GiB") and rounded down to whole bytes.
    Raises ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip())
        if m and m.group(2).lower() in _SIZE_UNITS:
            from fractions import Fraction  # here: it imports decimal, ~1.6 ms of each start

            return math.floor(Fraction(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"not a size: {value!r} (use e.g. 256MiB, 1GiB, 10MB, or bytes)")


# --- addresses and keys (ValueError with a readable detail) ----------------------------


def _split_host_port(text: str, default_port: int | None) -> tuple[str, int]:
    """Parse "host:port" / "[v6]:port" (port optional when default_port is given)."""
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("'[' without a closing ']'")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        if rest == "":
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise ValueError(f"unexpected {rest!r} after ']'")
    else:
        if text.count(":") > 1:
            raise ValueError("IPv6 addresses need brackets, e.g. [::1]:8022")
        host, sep, tail = text.partition(":")
        port_text = tail if sep else None
        if not host:
            raise ValueError("the host is missing")
        if not _HOST_RE.fullmatch(host) or host.startswith(("-", ".")):
            raise ValueError(f"{host!r} is not a host name or IP address")
    if port_text is None:
        if default_port is None:
            raise ValueError("the port is missing")
        return host, default_port
    if not _PORT_RE.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _parse_peer_address(text: str) -> tuple[str, int, str | None, bool]:
    """-> (host, port, ssh_user, via_ssh)."""
    if text.startswith("ssh://"):
        user, at, hostport = text[len("ssh://") :].partition("@")
        if not at or not user:
            raise ValueError("ssh:// addresses need a user: ssh://user@host[:port]")
        if not _USER_RE.fullmatch(user):
            raise ValueError(f"{user!r} is not a valid user name")
        if "/" in hostport or "@" in hostport:
            raise ValueError("nothing may follow host[:port] in ssh://user@host[:port]")
        host, port = _split_host_port(hostport, DEFAULT_SSH_PORT)
        return host, port, user, True
    if "://" in text:
        raise ValueError("unsupported scheme; only ssh:// is known")
    host, port = _split_host_port(text, DEFAULT_AGENT_PORT)
    return host, port, None, False


def _parse_public_key(text: str) -> str:
    """Validate "ssh-ed25519 <base64> [comment]"; return "ssh-ed25519 <base64>"."""
    parts = text.split(maxsplit=2)
    if not parts:
        raise ValueError("it is empty")
    if parts[0] != "ssh-ed25519":
        raise ValueError(f"only ssh-ed25519 keys are accepted, this is {parts[0][:32]!r}")
    if len(parts) < 2:
        raise ValueError("the base64 key data after 'ssh-ed25519' is missing")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64") from None
    if len(blob) != _ED25519_BLOB_LEN or not blob.startswith(_ED25519_BLOB_PREFIX):
        raise ValueError("the key data is not an ed25519 public key (truncated or altered?)")
    return f"ssh-ed25519 {parts[1]}"


# --- YAML loading ----------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r}; each key may appear only once in a mapping",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = "; ".join(str(p) for p in (exc.context, exc.problem) if p)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"invalid YAML{where}: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        shown = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        return f"invalid YAML at line {line}: control character {shown} is not allowed"
    return f"invalid YAML: {exc}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- validation ------------------------------------------------------------------------


def _got(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, datetime.date):
        return f"date {value.isoformat()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


class _Parser:
    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.file, key, _one_line(problem))

    def mapping(self, value: object, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            what = "must be a mapping" if key else "the top level must be a mapping"
            self.fail(key, f"{what} with keys {', '.join(allowed)} (got {_got(value)})")
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                import difflib  # only for this error's hint

                close = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(
                    _join(key, str(k)),
                    f"unknown key; {hint}allowed here: {', '.join(allowed)}",
                )
        return value

    def list_of(self, value: object, key: str, what: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, f"must be a list of {what} (got {_got(value)})")
        return value

    def string(self, m: dict[str, Any], parent: str, name: str, *, required: bool) -> str | None:
        key = _join(parent, name)
        value = m.get(name)
        if value is None:
            if required:
                self.fail(key, "is required")
            return None
        if not isinstance(value, str):
            hint = "" if isinstance(value, list | dict) else "; quote it if it is meant as text"
            self.fail(key, f"must be a string (got {_got(value)}){hint}")
        if not value.strip():
            self.fail(key, "must not be empty")
        return value

    def required(self, m: dict[str, Any], parent: str, name: str) -> str:
        value = self.string(m, parent, name, required=True)
        assert value is not None
        return value

    def name(self, m: dict[str, Any], parent: str, field: str) -> str:
        value = self.required(m, parent, field)
        if not _NAME_RE.fullmatch(value):
            self.fail(_join(parent, field), f"must be {_NAME_RULE} (got {value!r})")
        return value

    def path(self, m: dict[str, Any], parent: str, name: str, default: Path) -> Path:
        text = self.string(m, parent, name, required=False)
        if text is None:
            return default
        if "\0" in text:
            self.fail(_join(parent, name), "must not contain a NUL character")
        p = Path(os.path.expanduser(text))
        if not p.is_absolute():
            p = self.base_dir / p
        p = Path(os.path.normpath(p))
        if not p.is_absolute():  # only possible if the base itself is relative
            self.fail(_join(parent, name), f"must be an absolute path (got {text!r})")
        return p

    def endpoint(self, key: str, text: str, example: str) -> tuple[str, int]:
        try:
            return _split_host_port(text.strip(), None)
        except ValueError as exc:
            self.fail(key, f"{exc}; expected host:port such as {example} (got {text!r})")

    def duration(self, m: dict[str, Any], key: str, default: float, *, zero_ok: bool) -> float:
        value = m.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.fail(
                key,
                f"must be a duration such as 60s, 20ms, 5m or 1h, or a number of seconds "
                f"(got {_got(value)})",
            )
        if seconds < 0 or (seconds == 0 and not zero_ok):
            bound = "0 or more" if zero_ok else "greater than 0"
            self.fail(key, f"must be {bound} (got {_got(value)})")
        return seconds

    # sections

    def node(self, value: object) -> NodeConfig:
        if value is None:
            self.fail("node", "is required: a mapping with at least 'name'")
        m = self.mapping(value, "node", _NODE_KEYS)
        name = self.name(m, "node", "name")
        listen = self.string(m, "node", "listen", required=False) or DEFAULT_LISTEN
        host, port = self.endpoint("node.listen", listen, "0.0.0.0:8022 or [::1]:8022")
        key = self.path(m, "node", "key", DEFAULT_KEY)
        state_dir = self.path(m, "node", "state_dir", DEFAULT_STATE_DIR)
        return NodeConfig(name, host, port, key, state_dir)

    def folder(self, value: object, key: str) -> FolderConfig:
        m = self.mapping(value, key, _FOLDER_KEYS)
        folder_id = self.name(m, key, "id")
        if m.get("path") is None:
            self.fail(_join(key, "path"), "is required: the folder's directory on this node")
        path = self.path(m, key, "path", Path("/"))
        mode_text = m.get("mode", FolderMode.SEND_RECEIVE.value)
        if mode_text is None:
            mode_text = FolderMode.SEND_RECEIVE.value
        try:
            mode = FolderMode(mode_text)
        except ValueError:
            self.fail(_join(key, "mode"), f"must be one of {_MODES} (got {_got(mode_text)})")
        ignore_key = _join(key, "ignore")
        patterns = self.list_of(m.get("ignore"), ignore_key, "gitignore-style patterns")
        for i, pattern in enumerate(patterns):
            if not isinstance(pattern, str) or not pattern.strip():
                self.fail(
                    f"{ignore_key}[{i}]",
                    f"must be a non-empty gitignore-style pattern string (got {_got(pattern)})",
                )
        on_change = self.string(m, key, "on_change", required=False)
        return FolderConfig(folder_id, path, mode, tuple(patterns), on_change)

    def peer(self, value: object, key: str, node_name: str) -> PeerConfig:
        m = self.mapping(value, key, _PEER_KEYS)
        name = self.name(m, key, "name")
        if name == node_name:
            self.fail(
                _join(key, "name"),
                f"{name!r} is this node's own name (node.name); list only the other nodes",
            )
        address = self.required(m, key, "address").strip()
        try:
            host, port, user, via_ssh = _parse_peer_address(address)
        except ValueError as exc:
            self.fail(
                _join(key, "address"),
                f"{exc}; expected host[:port] of the peer's agent (port {DEFAULT_AGENT_PORT} "
                f"by default) or ssh://user@host[:port] (got {address!r})",
            )
        key_text = self.string(m, key, "public_key", required=False)
        public_key: str | None = None
        if key_text is None:
            if not via_ssh:
                self.fail(
                    _join(key, "public_key"),
                    "is required for a peer reached at its agent: the 'ssh-ed25519 AAAA...' "
                    "line printed by `dagsync init` on that node",
                )
        else:
            try:
                public_key = _parse_public_key(key_text)
            except ValueError as exc:
                self.fail(
                    _join(key, "public_key"),
                    f"{exc}; expected 'ssh-ed25519 <base64> [comment]' as printed by "
                    f"`dagsync init` on that node",
                )
        return PeerConfig(name, address, public_key, host, port, user, via_ssh)

    def check_layout(self, node: NodeConfig, folders: list[FolderConfig]) -> None:
        state = node.state_dir
        for i, f in enumerate(folders):
            key = f"folders[{i}].path"
            for j, g in enumerate(folders[:i]):
                if f.path == g.path:
                    self.fail(key, f"{f.path} is already folders[{j}].path; give each its own")
                if f.path.is_relative_to(g.path):
                    self.fail(
                        key,
                        f"{f.path} is inside folders[{j}].path ({g.path}); folders must not nest",
                    )
                if g.path.is_relative_to(f.path):
                    self.fail(
                        key,
                        f"{f.path} contains folders[{j}].path ({g.path}); folders must not nest",
                    )
            if f.path == state:
                self.fail(key, f"{f.path} is node.state_dir; synced folders must be elsewhere")
            if f.path.is_relative_to(state):
                self.fail(
                    key,
                    f"{f.path} is inside node.state_dir ({state}); "
                    f"keep synced folders outside the state dir",
                )
            if state.is_relative_to(f.path):
                self.fail(
                    key,
                    f"{f.path} contains node.state_dir ({state}); "
                    f"the state dir must be outside every synced folder",
                )
            if node.key.is_relative_to(f.path):
                self.fail(
                    "node.key",
                    f"{node.key} is inside folders[{i}].path ({f.path}); the private key "
                    f"would be sent to every peer, keep it outside synced folders",
                )

    def config(self, data: object, source: Path) -> Config:
        if data is None:
            self.fail("", "the file is empty; it needs at least 'node' and 'folders'")
        top = self.mapping(data, "", _TOP_KEYS)
        node = self.node(top.get("node"))

        items = self.list_of(top.get("folders"), "folders", "folder mappings")
        if not items:
            self.fail("folders", "must list at least one folder (id and path)")
        folders: list[FolderConfig] = []
        for i, item in enumerate(items):
            folder = self.folder(item, f"folders[{i}]")
            for j, other in enumerate(folders):
                if folder.id == other.id:
                    self.fail(
                        f"folders[{i}].id",
                        f"{folder.id!r} is already used by folders[{j}]; ids must be unique",
                    )
            folders.append(folder)
        self.check_layout(node, folders)

        peers: list[PeerConfig] = []
        for i, item in enumerate(self.list_of(top.get("peers"), "peers", "peer mappings")):
            peer = self.peer(item, f"peers[{i}]", node.name)
            for j, seen in enumerate(peers):
                if peer.name == seen.name:
                    self.fail(
                        f"peers[{i}].name",
                        f"{peer.name!r} is already used by peers[{j}]; names must be unique",
                    )
            peers.append(peer)

        scan_interval = self.duration(top, "scan_interval", DEFAULT_SCAN_INTERVAL, zero_ok=False)
        settle = self.duration(top, "settle", DEFAULT_SETTLE, zero_ok=True)

        max_file_size = DEFAULT_MAX_FILE_SIZE
        raw_size = top.get("max_file_size")
        if raw_size is not None:
            try:
                max_file_size = parse_size(raw_size)
            except ValueError:
                self.fail(
                    "max_file_size",
                    f"must be a size such as 256MiB, 1GiB, 10MB or a number of bytes "
                    f"(got {_got(raw_size)})",
                )
            if max_file_size <= 0:
                self.fail("max_file_size", f"must be greater than 0 (got {_got(raw_size)})")

        metrics: tuple[str, int] | None = None
        metrics_text = self.string(top, "", "metrics", required=False)
        if metrics_text is not None:
            metrics = self.endpoint("metrics", metrics_text, "127.0.0.1:9469")

        return Config(
            source=source,
            node=node,
            folders=tuple(folders),
            peers=tuple(peers),
            scan_interval=scan_interval,
            settle=settle,
            max_file_size=max_file_size,
            metrics=metrics,
            conflicts=self.conflicts(top.get("conflicts")),
        )

    def conflicts(self, value: object) -> ConflictRetention:
        if value is None:
            return ConflictRetention()
        m = self.mapping(value, "conflicts", _CONFLICT_KEYS)
        keep = m.get("keep", DEFAULT_CONFLICTS_KEEP)
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            self.fail("conflicts.keep", f"must be a whole number of 1 or more (got {_got(keep)})")
        max_age = DEFAULT_CONFLICTS_MAX_AGE
        if m.get("max_age") is not None:
            try:
                max_age = parse_duration(m["max_age"])
            except ValueError:
                self.fail("conflicts.max_age", "must be a duration such as 30d, 12h or 90m "
                          f"(got {_got(m['max_age'])})")
            if max_age <= 0:
                self.fail("conflicts.max_age", f"must be greater than 0 (got {_got(m['max_age'])})")
        return ConflictRetention(keep, max_age)


def parse_config(text: str, source: str | Path) -> Config:
    """Parse and validate YAML text; `source` names the file in errors and anchors
    relative paths (they are resolved against its directory)."""
    file = str(source)
    source_path = Path(os.path.abspath(source))
    parser = _Parser(file, source_path.parent)
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(file, "", _one_line(_yaml_problem(exc, text))) from None
    return parser.config(data, source_path)


def load_config(path: Path | None = None) -> Config:
    """Read and parse the config file (default_config_path() when None)."""
    if path is None:
        path = default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", f"cannot read: not UTF-8 text ({exc.reason})") from None
    return parse_config(text, path)
