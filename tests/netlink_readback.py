"""rtnetlink read-backs the plugin itself never needs, for tests that check what it wrote into the kernel.

They speak rtnetlink through the plugin's own socket (``Netlink.request``/``dump``), so they
read exactly what the kernel reports, with the same pyroute2 decoding the plugin uses.
"""

from __future__ import annotations

from typing import Any

from cni_bridge.network.netlink import Link, Netlink, link_from
from cni_bridge.network.pyroute2_lean import load

_ifinfmsg: Any = load("netlink.rtnl.ifinfmsg").ifinfmsg

# From the kernel's uapi headers.
_RTM_GETLINK = 18
_AF_BRIDGE = 7
_RTEXT_FILTER_BRVLAN = 1 << 1
_BRIDGE_VLAN_INFO_PVID = 0x2
_BRIDGE_VLAN_INFO_UNTAGGED = 0x4


def links(nl: Netlink) -> list[Link]:
    """Every link of the socket's namespace."""
    return [link_from(m) for m in nl.dump("list links", _ifinfmsg(), _RTM_GETLINK)]


def bridge_port_flags(nl: Netlink, index: int) -> dict[str, bool] | None:
    """``{"hairpin": ..., "isolated": ...}`` of a bridge port; None if the link is not one.

    A missing link raises NetlinkError (ENODEV).
    """
    msg = _ifinfmsg()
    msg["index"] = index
    replies = nl.request(f"read bridge port options of link #{index}", msg, _RTM_GETLINK)
    info = replies[0].get_attr("IFLA_LINKINFO") if replies else None
    # A port's own RTM_GETLINK reply carries its bridge-port attributes as "slave data"
    # of kind "bridge": one plain request, no AF_BRIDGE dump needed.
    if info is None or info.get_attr("IFLA_INFO_SLAVE_KIND") != "bridge":
        return None
    port = info.get_attr("IFLA_INFO_SLAVE_DATA")
    return {
        "hairpin": bool(port.get_attr("IFLA_BRPORT_MODE")),
        "isolated": bool(port.get_attr("IFLA_BRPORT_ISOLATED")),
    }


def port_vlans(nl: Netlink, index: int) -> list[tuple[int, bool, bool]]:
    """The VLANs of a bridge port as ``(vid, pvid, untagged)``, sorted by vid."""
    msg = _ifinfmsg()
    msg["family"] = _AF_BRIDGE
    msg["attrs"] = [("IFLA_EXT_MASK", _RTEXT_FILTER_BRVLAN)]
    # AF_BRIDGE has only a dump handler; a single-link request would be answered by
    # the generic handler, without VLANs.
    for reply in nl.dump(f"list VLANs of bridge port #{index}", msg, _RTM_GETLINK):
        spec = reply.get_attr("IFLA_AF_SPEC") if reply["index"] == index else None
        if spec is None:
            continue
        vlans = []
        for info in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO"):
            flags = info["flags"]
            vlans.append((info["vid"], bool(flags & _BRIDGE_VLAN_INFO_PVID), bool(flags & _BRIDGE_VLAN_INFO_UNTAGGED)))
        return sorted(vlans)
    return []
