"""CNI specification versions this plugin speaks, and comparisons between them."""

from __future__ import annotations

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
# A config without cniVersion is, by the spec, a 0.1.0 config.
IMPLICIT_VERSION = "0.1.0"


def key(version: str) -> tuple[int, ...]:
    """Sortable form of a version string; callers pass only supported versions."""
    return tuple(int(part) for part in version.split("."))


def at_least(version: str, minimum: str) -> bool:
    return key(version) >= key(minimum)


def is_legacy(version: str) -> bool:
    """0.1.0 and 0.2.0 results use the ip4/ip6 layout."""
    return key(version) < (0, 3, 0)
