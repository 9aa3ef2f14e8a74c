"""Published ports: the mapping model, host-port claims, and what publishing needs beyond rules.

Where published ports live (the reference's portmap plugin, in one place):

- ``PortMapping``: one entry of ``runtimeConfig.portMappings`` (config/model.py reads it);
- ``claims``: the (protocol, host port, host IP) triples an attachment publishes; state.py
  records who holds each, so a second publisher gets code 110 naming the first;
- the DNAT and hairpin rules themselves are each backend's (``dnat`` in iptables/scheme.py);
- ``allow_localhost_publishing``: ``route_localnet`` on the bridge, so 127.0.0.1:port works;
- ``flush_udp_conntrack``: stale UDP conntrack entries of a newly published port go.
"""

from __future__ import annotations

from ..records import record
from .model import WILDCARD, parse_address, validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .model import AttachmentRules


@record(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str
    host_ip: str = ""


@record(frozen=True)
class Claim:
    """A published (protocol, host port, host IP); host_ip is canonical, a wildcard is 0.0.0.0 or ::."""

    protocol: str
    host_port: int
    host_ip: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.host_ip else 4

    @property
    def wildcard(self) -> bool:
        return self.host_ip == WILDCARD[self.family]

    def __str__(self) -> str:
        return f"{self.host_port}/{self.protocol} on {self.host_ip}"


def mapping_families(host_ip: str, where: str) -> tuple[tuple[int, str], ...]:
    """(family, destination address or "" for any) pairs a mapping's hostIP publishes in."""
    if not host_ip:
        return ((4, ""), (6, ""))
    family, address = parse_address(host_ip, where)
    return ((family, "" if address == WILDCARD[family] else address),)


def claims(rules: AttachmentRules) -> tuple[Claim, ...]:
    """The (protocol, port, host IP) triples this attachment publishes, in order, once each.

    Only families in which the container has an address publish anything, as in the
    reference portmap; so only those are claimed.
    """
    validate(rules)
    families = {parse_address(ip, "ips[]")[0] for ip, _ in rules.ips}
    out: dict[Claim, None] = {}
    for i, pm in enumerate(rules.port_mappings):
        for family, address in mapping_families(pm.host_ip, f"runtimeConfig.portMappings[{i}].hostIP"):
            if family in families:
                out[Claim(pm.protocol, pm.host_port, address or WILDCARD[family])] = None
    return tuple(out)


def allow_localhost_publishing(bridge: str) -> None:
    """127.0.0.1:port is DNATed to the container and routed out of the bridge: the kernel
    drops such packets unless the bridge allows loopback sources (the localhost guard in
    raw PREROUTING keeps outsiders from using the same door)."""
    from ..network import sysctl
    sysctl.ensure(("net/ipv4/conf/{}/route_localnet", bridge), 1)


def flush_udp_conntrack(host_ports: Iterable[int]) -> int:
    """Delete UDP conntrack entries whose original destination port is one of host_ports (in
    the current network namespace), so replies stop going to whoever had the port before;
    return how many. CniError(FIREWALL_FAILURE) if ctnetlink refuses."""
    from .conntrack import flush_udp
    return flush_udp(host_ports)
