"""SHA-256 for the names derived from attachments and bridges, without loading OpenSSL.

``import hashlib`` loads ``_hashlib`` and with it libcrypto, about 2 ms of every ADD and DEL
start for a digest of a few dozen bytes. CPython carries its own SHA-256 as a built-in
module (``_sha256`` in 3.11, ``_sha2`` from 3.12); hashlib is only the fallback for a build
without it. The digests are the same whichever implementation computes them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _implementation() -> Callable[[bytes], Any]:
    import importlib
    for name in ("_sha256", "_sha2"):  # CPython 3.11, 3.12+
        try:
            found: Callable[[bytes], Any] = importlib.import_module(name).sha256
            return found
        except ImportError:
            continue
    import hashlib
    return hashlib.sha256


def sha256_digest(data: bytes) -> bytes:
    digest: bytes = _implementation()(data).digest()
    return digest


def sha256_hex(data: bytes) -> str:
    digest: str = _implementation()(data).hexdigest()
    return digest
