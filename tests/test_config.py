"""Config parsing: valid files give the right frozen values, every invalid one a
one-line ConfigError naming the file and the key path."""

from __future__ import annotations

import base64
import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dagsync.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    FolderConfig,
    NodeConfig,
    PeerConfig,
    default_config_path,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from dagsync.errors import ConfigError
from dagsync.model import FolderMode

SRC = "/etc/dagsync/dagsync.yaml"
REPO = Path(__file__).resolve().parent.parent

_BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
KEY = "ssh-ed25519 " + base64.b64encode(_BLOB).decode()
KEY2 = "ssh-ed25519 " + base64.b64encode(_BLOB[:-1] + b"\xff").decode()

DELETE = object()


def minimal() -> dict[str, Any]:
    return {"node": {"name": "master1"}, "folders": [{"id": "dags", "path": "/opt/airflow/dags"}]}


def with_peers() -> dict[str, Any]:
    d = minimal()
    d["peers"] = [
        {"name": "master2", "address": "master2:8022", "public_key": KEY},
        {"name": "worker1", "address": "ssh://airflow@worker1"},
    ]
    return d


def parse(data: dict[str, Any] | str, source: str | Path = SRC) -> Config:
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    return parse_config(text, source)


def _set(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """Set (or with DELETE remove) `node.name`, `folders[1].path`, ... in a copy."""
    data = copy.deepcopy(data)
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(name if name else int(index))
    target: Any = data
    for part in parts[:-1]:
        target = target[part]
    if value is DELETE:
        del target[parts[-1]]
    elif isinstance(target, list) and parts[-1] == len(target):
        target.append(value)
    else:
        target[parts[-1]] = value
    return data


def expect_error(data: dict[str, Any] | str, key: str, fragment: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data)
    err = info.value
    assert err.file == SRC
    assert err.key == key, str(err)
    assert fragment in err.problem, str(err)
    assert str(err).startswith(f"{SRC}: {key}: " if key else f"{SRC}: ")
    assert "\n" not in str(err)
    return err


# --- valid configs ----------------------------------------------------------------------


def test_minimal_config_gets_every_default() -> None:
    cfg = parse(minimal())
    assert cfg.source == Path(SRC)
    assert cfg.node == NodeConfig(
        name="master1",
        listen_host="0.0.0.0",
        listen_port=8022,
        key=Path("/etc/dagsync/node_key"),
        state_dir=Path("/var/lib/dagsync"),
    )
    assert cfg.folders == (
        FolderConfig("dags", Path("/opt/airflow/dags"), FolderMode.SEND_RECEIVE, (), None),
    )
    assert cfg.peers == ()
    assert cfg.scan_interval == 60.0
    assert cfg.settle == pytest.approx(0.020)
    assert cfg.max_file_size == 256 * 1024 * 1024
    assert cfg.metrics is None


FULL = f"""
node:
  name: master1
  listen: 10.0.0.1:9022
  key: /srv/dagsync/key
  state_dir: /srv/dagsync/state
folders:
  - id: dags
    path: /opt/airflow/dags
    mode: send-receive
    ignore: ["__pycache__/", "*.pyc"]
    on_change: "touch /tmp/changed"
  - id: plugins
    path: /opt/airflow/plugins
    mode: receive-only
  - id: data.v2
    path: /opt/airflow/data
    mode: send-only
    ignore: []
peers:
  - name: master2
    address: master2.example.com:8022
    public_key: "{KEY} root@master2"
  - name: worker1
    address: ssh://airflow@worker1
  - name: worker2
    address: ssh://airflow@worker2:2222
    public_key: "{KEY2}"
scan_interval: 5m
settle: 1.5s
max_file_size: 1GiB
metrics: 127.0.0.1:9469
"""


def test_full_config_parses_to_the_right_values() -> None:
    cfg = parse(FULL)
    assert cfg.node == NodeConfig(
        "master1", "10.0.0.1", 9022, Path("/srv/dagsync/key"), Path("/srv/dagsync/state")
    )
    assert [f.id for f in cfg.folders] == ["dags", "plugins", "data.v2"]
    assert cfg.folder("dags").ignore == ("__pycache__/", "*.pyc")
    assert cfg.folder("dags").on_change == "touch /tmp/changed"
    assert cfg.folder("plugins").mode is FolderMode.RECEIVE_ONLY
    assert cfg.folder("plugins").ignore == ()
    assert cfg.folder("data.v2").mode is FolderMode.SEND_ONLY
    assert cfg.peers == (
        PeerConfig("master2", "master2.example.com:8022", KEY, "master2.example.com", 8022,
                   None, False),
        PeerConfig("worker1", "ssh://airflow@worker1", None, "worker1", 22, "airflow", True),
        PeerConfig("worker2", "ssh://airflow@worker2:2222", KEY2, "worker2", 2222, "airflow",
                   True),
    )  # fmt: skip
    assert cfg.scan_interval == 300.0
    assert cfg.settle == 1.5
    assert cfg.max_file_size == 1024**3
    assert cfg.metrics == ("127.0.0.1", 9469)


def test_lookup_helpers() -> None:
    cfg = parse(FULL)
    assert cfg.folder("plugins").path == Path("/opt/airflow/plugins")
    with pytest.raises(KeyError):
        cfg.folder("nope")
    peer = cfg.peer("worker1")
    assert peer is not None and peer.via_ssh
    assert cfg.peer("nope") is None


def test_config_is_frozen() -> None:
    cfg = parse(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scan_interval = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.name = "x"  # type: ignore[misc]
    assert isinstance(cfg.folders, tuple) and isinstance(cfg.folders[0].ignore, tuple)


def test_null_optional_values_mean_default() -> None:
    text = """
node: {name: a, listen: null, key: null, state_dir: null}
folders:
  - {id: d, path: /srv/d, mode: null, ignore: null, on_change: null}
peers:
scan_interval:
settle:
max_file_size:
metrics:
"""
    cfg = parse(text)
    assert cfg.node.listen_port == 8022 and cfg.node.key == Path("/etc/dagsync/node_key")
    assert cfg.folders[0].mode is FolderMode.SEND_RECEIVE and cfg.folders[0].ignore == ()
    assert cfg.peers == () and cfg.metrics is None and cfg.scan_interval == 60.0


def test_yaml_anchors_and_merge_keys_are_fine() -> None:
    text = """
node: {name: a}
folders:
  - &base {id: d1, path: /srv/d1, ignore: ["*.pyc"]}
  - {<<: *base, id: d2, path: /srv/d2}
"""
    cfg = parse(text)
    assert cfg.folder("d2").ignore == ("*.pyc",)


def test_example_file_parses() -> None:
    path = REPO / "config.example.yaml"
    cfg = load_config(path)
    assert cfg.source == path
    assert cfg.node.name == "master1"
    assert [f.id for f in cfg.folders] == ["dags", "plugins"]
    assert cfg.folder("dags").ignore == ("__pycache__/", "*.pyc", ".git/", "*.swp", "*~")
    assert [(p.name, p.via_ssh) for p in cfg.peers] == [("master2", False), ("worker1", True)]
    assert (cfg.scan_interval, cfg.settle, cfg.max_file_size) == (60.0, 0.02, 256 * 2**20)


# --- paths --------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory() -> None:
    d = minimal()
    d["node"].update(key="keys/node_key", state_dir="../state")
    d["folders"][0]["path"] = "./dags/"
    cfg = parse(d, source="/srv/conf/dagsync.yaml")
    assert cfg.node.key == Path("/srv/conf/keys/node_key")
    assert cfg.node.state_dir == Path("/srv/state")
    assert cfg.folders[0].path == Path("/srv/conf/dags")


def test_relative_source_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    d = _set(minimal(), "folders[0].path", "dags")
    cfg = parse(d, source="conf/dagsync.yaml")
    assert cfg.source == tmp_path / "conf" / "dagsync.yaml"
    assert cfg.folders[0].path == tmp_path / "conf" / "dags"


def test_home_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/airflow")
    cfg = parse(_set(minimal(), "folders[0].path", "~/dags"))
    assert cfg.folders[0].path == Path("/home/airflow/dags")


def test_absolute_paths_are_normalised() -> None:
    cfg = parse(_set(minimal(), "folders[0].path", "/opt//airflow/./x/../dags/"))
    assert cfg.folders[0].path == Path("/opt/airflow/dags")


# --- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:8022", "0.0.0.0", 8022),
        ("localhost:1", "localhost", 1),
        ("node-1.example.com:65535", "node-1.example.com", 65535),
        ("[::1]:8022", "::1", 8022),
        ("[::]:9000", "::", 9000),
        ("[2001:db8::7]:8022", "2001:db8::7", 8022),
    ],
)
def test_listen_addresses(listen: str, host: str, port: int) -> None:
    cfg = parse(_set(minimal(), "node.listen", listen))
    assert (cfg.node.listen_host, cfg.node.listen_port) == (host, port)


@pytest.mark.parametrize(
    ("address", "host", "port", "user", "via_ssh"),
    [
        ("master2", "master2", 8022, None, False),
        ("master2:9000", "master2", 9000, None, False),
        ("10.0.0.2:8022", "10.0.0.2", 8022, None, False),
        ("[::1]:8022", "::1", 8022, None, False),
        ("[fe80::1]", "fe80::1", 8022, None, False),
        ("ssh://airflow@worker1", "worker1", 22, "airflow", True),
        ("ssh://airflow@worker1:2222", "worker1", 2222, "airflow", True),
        ("ssh://u@[::1]:22", "::1", 22, "u", True),
        ("ssh://u@[2001:db8::2]", "2001:db8::2", 22, "u", True),
    ],
)
def test_peer_addresses(
    address: str, host: str, port: int, user: str | None, via_ssh: bool
) -> None:
    d = minimal()
    d["peers"] = [{"name": "p", "address": address, "public_key": KEY}]
    peer = parse(d).peers[0]
    assert (peer.address, peer.host, peer.port, peer.ssh_user, peer.via_ssh) == (
        address,
        host,
        port,
        user,
        via_ssh,
    )


def test_public_key_comment_is_dropped() -> None:
    d = _set(with_peers(), "peers[0].public_key", f"  {KEY}   master2 node key ")
    assert parse(d).peers[0].public_key == KEY


def test_ipv6_metrics_address() -> None:
    assert parse(_set(minimal(), "metrics", "[::1]:9469")).metrics == ("::1", 9469)


# --- rejections ---------------------------------------------------------------------------

TOO_LONG = "a" * 65
BAD_KEY_TRUNCATED = "ssh-ed25519 " + base64.b64encode(_BLOB[:-4]).decode()
BAD_KEY_WRONG_TYPE = "ssh-ed25519 " + base64.b64encode(_BLOB.replace(b"ed", b"ab")).decode()

REJECTED: list[tuple[str, str, object, str, str]] = [
    # (case id, key path to change, new value or DELETE, key in error, problem fragment)
    ("top-unknown", "colour", "blue", "colour", "unknown key"),
    ("node-missing", "node", DELETE, "node", "is required"),
    ("node-not-mapping", "node", "master1", "node", "must be a mapping"),
    ("node-unknown", "node.nmae", "x", "node.nmae", "did you mean 'name'"),
    ("name-missing", "node.name", DELETE, "node.name", "is required"),
    ("name-int", "node.name", 5, "node.name", "must be a string (got integer 5)"),
    ("name-bool", "node.name", True, "node.name", "must be a string (got boolean true)"),
    ("name-pattern", "node.name", "-master", "node.name", "starting with a letter or digit"),
    ("name-space", "node.name", "master 1", "node.name", "letters, digits"),
    ("name-slash", "node.name", "a/b", "node.name", "letters, digits"),
    ("name-too-long", "node.name", TOO_LONG, "node.name", "1-64"),
    ("name-empty", "node.name", "", "node.name", "must not be empty"),
    ("listen-int", "node.listen", 8022, "node.listen", "must be a string"),
    ("listen-no-port", "node.listen", "0.0.0.0", "node.listen", "port is missing"),
    ("listen-port-0", "node.listen", "0.0.0.0:0", "node.listen", "1 to 65535"),
    ("listen-port-big", "node.listen", "0.0.0.0:65536", "node.listen", "1 to 65535"),
    ("listen-port-text", "node.listen", "0.0.0.0:ssh", "node.listen", "1 to 65535"),
    ("listen-no-host", "node.listen", ":8022", "node.listen", "host is missing"),
    ("listen-v6-bare", "node.listen", "::1:8022", "node.listen", "need brackets"),
    ("listen-v6-open", "node.listen", "[::1:8022", "node.listen", "closing ']'"),
    ("listen-v6-bad", "node.listen", "[host]:8022", "node.listen", "not an IPv6 address"),
    ("listen-v6-junk", "node.listen", "[::1]8022", "node.listen", "after ']'"),
    ("listen-bad-host", "node.listen", "a b:80", "node.listen", "not a host name"),
    ("key-type", "node.key", 12, "node.key", "must be a string"),
    ("key-nul", "node.key", "/etc/a\0b", "node.key", "NUL"),
    ("state-type", "node.state_dir", ["/x"], "node.state_dir", "must be a string (got a list)"),
    ("folders-missing", "folders", DELETE, "folders", "at least one folder"),
    ("folders-empty", "folders", [], "folders", "at least one folder"),
    ("folders-not-list", "folders", {"id": "d"}, "folders", "must be a list"),
    ("folder-not-mapping", "folders[0]", "/opt/dags", "folders[0]", "must be a mapping"),
    ("folder-unknown", "folders[0].paht", "/x", "folders[0].paht", "did you mean 'path'"),
    ("folder-id-missing", "folders[0].id", DELETE, "folders[0].id", "is required"),
    ("folder-id-int", "folders[0].id", 7, "folders[0].id", "must be a string"),
    ("folder-id-pattern", "folders[0].id", "my dags", "folders[0].id", "letters, digits"),
    ("folder-path-missing", "folders[0].path", DELETE, "folders[0].path", "is required"),
    ("folder-path-int", "folders[0].path", 1, "folders[0].path", "must be a string"),
    ("mode-bad", "folders[0].mode", "sendrecv", "folders[0].mode",
     "must be one of send-receive, send-only, receive-only (got 'sendrecv')"),
    ("mode-int", "folders[0].mode", 1, "folders[0].mode", "must be one of"),
    ("ignore-string", "folders[0].ignore", "*.pyc", "folders[0].ignore", "must be a list"),
    ("ignore-item", "folders[0].ignore", ["*.pyc", 3], "folders[0].ignore[1]", "integer 3"),
    ("ignore-empty", "folders[0].ignore", [""], "folders[0].ignore[0]", "non-empty"),
    ("on-change-int", "folders[0].on_change", 1, "folders[0].on_change", "must be a string"),
    ("on-change-empty", "folders[0].on_change", " ", "folders[0].on_change", "not be empty"),
    ("folder-dup-id", "folders[1]", {"id": "dags", "path": "/srv/x"}, "folders[1].id",
     "already used by folders[0]"),
    ("folder-dup-path", "folders[1]", {"id": "d2", "path": "/opt/airflow/dags/"},
     "folders[1].path", "already folders[0].path"),
    ("folder-inside", "folders[1]", {"id": "d2", "path": "/opt/airflow/dags/sub"},
     "folders[1].path", "inside folders[0].path"),
    ("folder-contains", "folders[1]", {"id": "d2", "path": "/opt"}, "folders[1].path",
     "contains folders[0].path"),
    ("folder-in-state", "folders[0].path", "/var/lib/dagsync/dags", "folders[0].path",
     "inside node.state_dir"),
    ("folder-is-state", "folders[0].path", "/var/lib/dagsync", "folders[0].path",
     "is node.state_dir"),
    ("state-in-folder", "node.state_dir", "/opt/airflow/dags/.dagsync", "folders[0].path",
     "contains node.state_dir"),
    ("folder-root", "folders[0].path", "/", "folders[0].path", "contains node.state_dir"),
    ("key-in-folder", "node.key", "/opt/airflow/dags/node_key", "node.key",
     "inside folders[0].path"),
    ("peers-not-list", "peers", {"name": "x"}, "peers", "must be a list"),
    ("peer-not-mapping", "peers[0]", "master2", "peers[0]", "must be a mapping"),
    ("peer-unknown", "peers[0].key", KEY, "peers[0].key", "unknown key"),
    ("peer-name-missing", "peers[0].name", DELETE, "peers[0].name", "is required"),
    ("peer-name-pattern", "peers[0].name", "worker 1", "peers[0].name", "letters, digits"),
    ("peer-name-self", "peers[0].name", "master1", "peers[0].name", "this node's own name"),
    ("peer-name-dup", "peers[1].name", "master2", "peers[1].name", "already used by peers[0]"),
    ("address-missing", "peers[0].address", DELETE, "peers[0].address", "is required"),
    ("address-int", "peers[0].address", 8022, "peers[0].address", "must be a string"),
    ("address-no-user", "peers[1].address", "ssh://worker1", "peers[1].address",
     "need a user"),
    ("address-empty-user", "peers[1].address", "ssh://@worker1", "peers[1].address",
     "need a user"),
    ("address-bad-user", "peers[1].address", "ssh://a;b@worker1", "peers[1].address",
     "not a valid user name"),
    ("address-path", "peers[1].address", "ssh://u@worker1/x", "peers[1].address",
     "nothing may follow"),
    ("address-scheme", "peers[0].address", "tcp://master2:8022", "peers[0].address",
     "unsupported scheme"),
    ("address-port", "peers[0].address", "master2:0", "peers[0].address", "1 to 65535"),
    ("address-ssh-port", "peers[1].address", "ssh://u@w:99999", "peers[1].address",
     "1 to 65535"),
    ("address-v6-bare", "peers[0].address", "::1", "peers[0].address", "need brackets"),
    ("address-v6-ssh-open", "peers[1].address", "ssh://u@[::1", "peers[1].address",
     "closing ']'"),
    ("pubkey-missing", "peers[0].public_key", DELETE, "peers[0].public_key", "is required"),
    ("pubkey-int", "peers[0].public_key", 1, "peers[0].public_key", "must be a string"),
    ("pubkey-rsa", "peers[0].public_key", "ssh-rsa AAAAB3NzaC1yc2E=", "peers[0].public_key",
     "only ssh-ed25519"),
    ("pubkey-no-data", "peers[0].public_key", "ssh-ed25519", "peers[0].public_key",
     "is missing"),
    ("pubkey-not-b64", "peers[0].public_key", "ssh-ed25519 !!!!", "peers[0].public_key",
     "not valid base64"),
    ("pubkey-placeholder", "peers[0].public_key", "ssh-ed25519 AAAA...",
     "peers[0].public_key", "not valid base64"),
    ("pubkey-truncated", "peers[0].public_key", BAD_KEY_TRUNCATED, "peers[0].public_key",
     "not an ed25519 public key"),
    ("pubkey-wrong-blob", "peers[0].public_key", BAD_KEY_WRONG_TYPE, "peers[0].public_key",
     "not an ed25519 public key"),
    ("pubkey-ssh-peer-bad", "peers[1].public_key", "ssh-ed25519 AAAA", "peers[1].public_key",
     "not an ed25519 public key"),
    ("scan-zero", "scan_interval", "0s", "scan_interval", "greater than 0"),
    ("scan-negative", "scan_interval", -1, "scan_interval", "greater than 0"),
    ("scan-text", "scan_interval", "fast", "scan_interval", "must be a duration"),
    ("scan-unit", "scan_interval", "60x", "scan_interval", "must be a duration"),
    ("scan-bool", "scan_interval", True, "scan_interval", "(got boolean true)"),
    ("settle-negative", "settle", -0.5, "settle", "0 or more"),
    ("settle-list", "settle", [1], "settle", "must be a duration"),
    ("size-zero", "max_file_size", 0, "max_file_size", "greater than 0"),
    ("size-negative", "max_file_size", -5, "max_file_size", "greater than 0"),
    ("size-text", "max_file_size", "lots", "max_file_size", "must be a size"),
    ("size-unit", "max_file_size", "10XB", "max_file_size", "must be a size"),
    ("size-bool", "max_file_size", False, "max_file_size", "must be a size"),
    ("metrics-int", "metrics", 9469, "metrics", "must be a string"),
    ("metrics-no-port", "metrics", "127.0.0.1", "metrics", "port is missing"),
    ("metrics-bad-port", "metrics", "127.0.0.1:x", "metrics", "1 to 65535"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "key", "fragment"),
    [case[1:] for case in REJECTED],
    ids=[case[0] for case in REJECTED],
)
def test_invalid_configs_are_rejected_with_the_key_path(
    path: str, value: object, key: str, fragment: str
) -> None:
    expect_error(_set(with_peers(), path, value), key, fragment)


def test_spec_style_error_message() -> None:
    err = expect_error(_set(minimal(), "folders[0].mode", "sendrecv"), "folders[0].mode", "")
    assert str(err) == (
        "/etc/dagsync/dagsync.yaml: folders[0].mode: must be one of send-receive, "
        "send-only, receive-only (got 'sendrecv')"
    )


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("node: [\n", "", "invalid YAML at line 2"),
        ("node:\n  name: a\n\tfolders: []\n", "", "invalid YAML at line 3"),
        ("node: {name: a}\nfolders: [{id: d, path: /x}]\nnode: {name: b}\n", "",
         "line 3, column 1: duplicate key 'node'"),
        ("node:\n  name: a\n  name: b\nfolders: [{id: d, path: /x}]\n", "",
         "line 3, column 3: duplicate key 'name'"),
        ("a: 1\n\x01\n", "", "invalid YAML at line 2"),
        ("--- {a: 1}\n--- {b: 2}\n", "", "invalid YAML"),
        ("", "", "the file is empty"),
        ("# only a comment\n", "", "the file is empty"),
        ("- node\n", "", "the top level must be a mapping"),
        ("just text\n", "", "the top level must be a mapping"),
        ("node: {name: a}\nfolders: [{id: d, path: /x}]\n1: x\n", "1", "unknown key"),
        ("node: {name: 2024-01-01}\nfolders: [{id: d, path: /x}]\n", "node.name",
         "must be a string (got date 2024-01-01); quote it"),
        ("node: {name: yes}\nfolders: [{id: d, path: /x}]\n", "node.name", "boolean true"),
    ],
)  # fmt: skip
def test_invalid_yaml_text_is_rejected(text: str, key: str, fragment: str) -> None:
    expect_error(text, key, fragment)


def test_errors_report_the_file_as_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("node: 1\n", "relative/dagsync.yaml")
    assert str(info.value).startswith("relative/dagsync.yaml: node: ")
    assert info.value.exit_code == 2


# --- durations and sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("60s", 60.0),
        ("20ms", 0.02),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("30d", 30 * 86400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("10 s", 10.0),
        ("0s", 0.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (60, 60.0),
        (0.25, 0.25),
        (-3, -3.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "s", "60x", "1w", "-5s", "5 m s", "fast", "1e3s", "60S", True, False, None, [60],
     float("nan"), float("inf")],
)  # fmt: skip
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("256MiB", 256 * 2**20),
        ("1GiB", 2**30),
        ("512KiB", 512 * 1024),
        ("2TiB", 2 * 2**40),
        ("10MB", 10_000_000),
        ("3kb", 3000),
        ("1GB", 10**9),
        ("1TB", 10**12),
        ("100", 100),
        ("100B", 100),
        ("1.5GiB", 3 * 2**29),
        ("0.1KiB", 102),
        ("64 MiB", 64 * 2**20),
        (4096, 4096),
        (1e6, 1_000_000),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value",
    ["", "MiB", "10XB", "10 M", "-1MiB", "1e3", "big", True, None, 1.5, float("inf"), ["1"]],
)
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


_SIZE_MULT = {"B": 1, "KB": 1000, "MB": 10**6, "KiB": 1024, "MiB": 2**20, "GiB": 2**30}
_DURATION_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(_SIZE_MULT)))
def test_parse_size_whole_units(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * _SIZE_MULT[unit]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(_DURATION_MULT)))
def test_parse_duration_whole_units(n: int, unit: str) -> None:
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * _DURATION_MULT[unit])


# --- files ---------------------------------------------------------------------------------


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dagsync.yaml"
    path.write_text(yaml.safe_dump(_set(minimal(), "folders[0].path", "dags")))
    cfg = load_config(path)
    assert cfg.source == path
    assert cfg.folders[0].path == tmp_path / "dags"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.key) == (str(path), "")
    assert info.value.problem.startswith("cannot read: ")
    assert "No such file" in info.value.problem
    assert str(info.value) == f"{path}: {info.value.problem}"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: "):
        load_config(tmp_path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "dagsync.yaml"
    path.write_bytes(b"node: {name: \xff}\n")
    with pytest.raises(ConfigError, match="cannot read: not UTF-8"):
        load_config(path)


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DAGSYNC_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == Path("/etc/dagsync/dagsync.yaml")
    monkeypatch.setenv("DAGSYNC_CONFIG", "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
    path = tmp_path / "alt.yaml"
    monkeypatch.setenv("DAGSYNC_CONFIG", str(path))
    assert default_config_path() == path
    with pytest.raises(ConfigError) as info:
        load_config()
    assert info.value.file == str(path)
    path.write_text(yaml.safe_dump(minimal()))
    assert load_config().node.name == "master1"


def test_conflict_retention_defaults_and_values(tmp_path: Path) -> None:
    base = (
        "node: {name: n1, state_dir: /var/lib/x}\n"
        "folders: [{id: dags, path: /opt/airflow/dags}]\n"
    )
    cfg = parse_config(base, tmp_path / "c.yaml")
    assert cfg.conflicts.keep == 1000 and cfg.conflicts.max_age == 90 * 86400
    cfg = parse_config(base + "conflicts: {keep: 5, max_age: 7d}\n", tmp_path / "c.yaml")
    assert cfg.conflicts.keep == 5 and cfg.conflicts.max_age == 7 * 86400
    for bad, key in (("{keep: 0}", "conflicts.keep"), ("{max_age: soon}", "conflicts.max_age"),
                     ("{kep: 3}", "conflicts.kep")):
        with pytest.raises(ConfigError) as err:
            parse_config(base + f"conflicts: {bad}\n", tmp_path / "c.yaml")
        assert key in str(err.value)
