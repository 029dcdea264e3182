"""Keep the system's OpenSSL out of a dagsync process.

dagsync speaks SSH through asyncssh, whose ciphers, key exchange and signatures come
from `cryptography`, which carries its own OpenSSL. The system's libssl and libcrypto
get loaded anyway, for two things dagsync never needs: asyncio imports `ssl` for TLS,
and hashlib imports `_hashlib` for OpenSSL's MD5 and SHA, which Python also has built
in. Leaving both out saves each agent ~4.5 MiB resident (docs/memory.md).

`keep_openssl_out` runs when the dagsync package is first imported, before anything has
imported asyncio or hashlib. It does nothing when they are already loaded, as in a test
process, and it does nothing on a Python built without its own hashes. `ssl` can still
be imported afterwards: prometheus-client imports it when `metrics:` is set."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator

# Python's own hash modules: hashlib and hmac fall back to them without _hashlib.
_BUILTIN_HASHES = (("_md5", "_sha1", "_sha2") if sys.version_info >= (3, 12)
                   else ("_md5", "_sha1", "_sha256", "_sha512"))


@contextlib.contextmanager
def modules_absent(*names: str) -> Iterator[None]:
    """While the block runs, importing `names` raises ImportError, so a module imported
    inside it that treats them as optional goes without. Names already loaded are left
    as they are."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def keep_openssl_out() -> None:
    if "hashlib" not in sys.modules and "_hashlib" not in sys.modules and all(
            importlib.util.find_spec(name) is not None for name in _BUILTIN_HASHES):
        sys.modules["_hashlib"] = None  # type: ignore[assignment]  # stays: hmac looks later
        import hashlib  # noqa: F401
    if "asyncio" not in sys.modules and "ssl" not in sys.modules:
        with modules_absent("ssl"):
            import asyncio  # noqa: F401 - it imports ssl in a try: TLS off, nothing else
