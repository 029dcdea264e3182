"""Error tree. Each error carries a message written for the operator; the CLI renders it."""

from __future__ import annotations


class DagsyncError(Exception):
    """Base of every error dagsync reports to a user. `exit_code` follows SPEC (1 or 2)."""

    exit_code = 1


class ConfigError(DagsyncError):
    """The configuration file is missing, unreadable or invalid (exit 2)."""

    exit_code = 2

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


class UsageError(DagsyncError):
    """A command was called in a way that cannot work (exit 2)."""

    exit_code = 2


class ProtocolError(DagsyncError):
    """A peer sent something the protocol forbids; that one connection is closed."""


class PathRefused(DagsyncError):
    """A peer named a path outside what SPEC guarantee 8 allows."""


class TransportError(DagsyncError):
    """A peer could not be reached or the connection broke."""


class PeerClosed(TransportError):
    """The peer ended the connection on purpose (stopping, duplicate, round done)."""


class AgentNotRunning(DagsyncError):
    """No agent answers on the control socket."""
