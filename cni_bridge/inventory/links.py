"""Host veths and their bridges, from one dump of bridge ports plus a lookup per exception.

A full link dump (RTM_GETLINK, AF_UNSPEC) makes the kernel write ~1.9 kB per link (statistics,
every IPv6 setting) and pyroute2 decode ~40 attributes of each: 0.4-1 s for 2000 links here.
The bridge ports' dump (AF_BRIDGE, what `bridge link` shows) holds only ports, a few attributes
each, of which name, master and flags are read (``Netlink.bridge_ports``): ~45 ms for a
thousand, spent while the firewall listings run (kernel.RuleCheck.prefetching). A host veth
missing from it is looked up by name on its own (detached, or gone), and each bridge by index
for its name: a handful of requests, on a host where few things are broken.

pyroute2 builds and decodes every message, as everywhere in the project; the socket is of the
network namespace current at the call (unlike /sys/class/net, which shows the namespace sysfs
was mounted in: the wrong one under `nsenter --net`).
"""

from __future__ import annotations

from ..errors import CniError
from ..records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..network.netlink import BridgePort

VETH_OK = "ok"
VETH_MISSING = "missing"
VETH_DETACHED = "detached"  # exists, but is not a port of any bridge
VETH_DOWN = "down"
VETH_UNKNOWN = "unknown"  # netlink refused, or no name to look for (a reservation without ifname)


@record(frozen=True)
class VethState:
    state: str  # one of VETH_*
    bridge: str  # the master's name, "" if none


class Links:
    """Host veths as bridge ports: one dump in the namespace current at construction
    (NetlinkError if it fails), a lookup for each veth that is not a port and each bridge's name."""

    def __init__(self) -> None:
        # Lazily: it loads pyroute2's message classes, which only this part of `list` needs.
        from ..network.netlink import Netlink
        self._netlink = Netlink()
        try:
            self._ports: dict[str, BridgePort] = {port.name: port for port in self._netlink.bridge_ports()}
        except BaseException:
            self._netlink.close()
            raise
        self._bridges: dict[int, str] = {}

    def close(self) -> None:
        self._netlink.close()

    def _bridge(self, index: int) -> str:
        if index not in self._bridges:
            bridge = self._netlink.link_by_index(index)
            self._bridges[index] = bridge.name if bridge is not None else ""
        return self._bridges[index]

    def veth(self, name: str) -> VethState:
        try:
            port = self._ports.get(name)
            if port is not None:
                return VethState(VETH_OK if port.up else VETH_DOWN, self._bridge(port.master))
            return VethState(VETH_MISSING if self._netlink.link(name) is None else VETH_DETACHED, "")
        except CniError:  # the kernel refused (NetlinkError), or a reply pyroute2 could not decode
            return VethState(VETH_UNKNOWN, "")
