"""IPAM: host-local built in, any other type delegated to the plugin of that name."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from ..request import Request
    from ..result import IPConfig, Result

    class IpamBackend(Protocol):
        def add(self) -> Result: ...
        def delete(self) -> None: ...
        def check(self, ips: list[IPConfig]) -> None: ...
        def gc(self, valid: frozenset[tuple[str, str]]) -> list[str]: ...
        def status(self) -> None: ...


def ipam_for(request: Request) -> IpamBackend | None:
    """None for an L2-only network (`"ipam": {}`)."""
    ipam = request.conf.ipam
    if ipam is None:
        return None
    if ipam.builtin:
        from .host_local import HostLocal
        return HostLocal(request, ipam)
    from .delegate import Delegated
    return Delegated(request, ipam)
