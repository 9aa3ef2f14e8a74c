"""One Entry per attachment: its firewall record and its reservations merged, its veth and
rules checked against the kernel.

An attachment is known by (network, container ID, ifname), the identity both books use; the
host veth's name derives from it (network/naming.py), so the veth of an attachment that has
only reservations can be checked too. Attachments that a DEL removes while this runs are left
out rather than reported broken: anything found broken is looked up again at the end.
"""

from __future__ import annotations

import os
import socket

from ..errors import CniError
from ..network.naming import host_veth_name
from ..records import record
from .kernel import RuleCheck
from .links import VETH_OK, VETH_UNKNOWN, Links, VethState
from .sources import FirewallBooks, reservations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from ..firewall.portmap import Claim
    from ..firewall.state import Attachment
    from .sources import Reservation

RULES_OK = "ok"
RULES_MISSING = "missing"
RULES_NONE = "none"  # no firewall record: no rules were installed, or the IPAM store is all we know
RULES_UNKNOWN = "unknown"  # the kernel's rules could not be listed

# Shared resources keyed by the bridge they serve, in both rule schemes.
_BRIDGE_KEYS = ("bridge:", "internal:", "isolate:")


@record(frozen=True)
class Entry:
    network: str
    container_id: str
    ifname: str  # "" for a legacy reservation that names only the container
    addresses: tuple[str, ...]
    ports: tuple[Claim, ...]
    bridge: str  # the veth's master, else the bridge the firewall record names, else ""
    host_veth: str  # "" when it cannot be derived (no ifname)
    veth: str  # kernel.VETH_*
    driver: str  # the firewall driver of the record, "" without one
    rules: str  # RULES_*
    missing: tuple[str, ...]  # what the kernel lacks of its rules and the shared ones it uses

    @property
    def intact(self) -> bool:
        return self.veth == VETH_OK and self.rules in (RULES_OK, RULES_NONE)


def _address_order(text: str) -> tuple[int, bytes]:
    """IPv4 before IPv6 (AF_INET < AF_INET6), each in numeric order; inet_pton costs a
    fraction of what ipaddress does, which counts with a thousand attachments."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return family, socket.inet_pton(family, text)


def _recorded_bridge(att: Attachment | None) -> str:
    for installed in att.units if att is not None else ():
        for key in installed.shared:
            for prefix in _BRIDGE_KEYS:
                if key.startswith(prefix):
                    return key[len(prefix):]
    return ""


def _links(warnings: list[str]) -> Links | None:
    try:
        return Links()
    except CniError as exc:  # NetlinkError: no socket, or the kernel refused the dump
        warnings.append(f"cannot list the links: {exc}")
        return None


def _entry(identity: tuple[str, str, str], att: Attachment | None, ips: list[str], links: Links | None,
           rules: RuleCheck) -> Entry:
    network, container_id, ifname = identity
    veth_name = host_veth_name(network, container_id, ifname) if ifname else ""
    veth = links.veth(veth_name) if links is not None and veth_name else VethState(VETH_UNKNOWN, "")
    missing = rules.missing(att) if att is not None else []
    state = (RULES_NONE if att is None else RULES_UNKNOWN if missing is None
             else RULES_MISSING if missing else RULES_OK)
    return Entry(network, container_id, ifname, tuple(sorted(ips, key=_address_order)),
                 att.claims if att is not None else (), veth.bridge or _recorded_bridge(att), veth_name,
                 veth.state, att.driver if att is not None else "", state, tuple(missing or ()))


def collect(state_dir: str, data_dir: str, networks: Collection[str], warnings: list[str]) -> list[Entry]:
    """Every attachment of `networks` (all if empty), sorted by network, container ID, ifname."""
    books = FirewallBooks(state_dir, warnings)
    records = {(a.network, a.container_id, a.ifname): a for a in books.attachments()
               if not networks or a.network in networks}
    rules = RuleCheck(books, warnings)
    reserved: dict[tuple[str, str, str], list[Reservation]] = {}
    with rules.prefetching((att.driver, installed.unit) for att in records.values() for installed in att.units):
        for r in reservations(data_dir, networks, warnings):
            reserved.setdefault((r.network, r.container_id, r.ifname), []).append(r)
        links = _links(warnings)
    entries = []
    try:
        for identity in sorted(records.keys() | reserved.keys()):
            att = records.get(identity)
            held = reserved.get(identity, [])
            entry = _entry(identity, att, [r.ip for r in held], links, rules)
            if not entry.intact and _gone(books, att, data_dir, held):
                continue
            entries.append(entry)
    finally:
        if links is not None:
            links.close()
    return entries


def _gone(books: FirewallBooks, att: Attachment | None, data_dir: str, held: list[Reservation]) -> bool:
    """Whether a DEL removed the attachment from both books since they were read."""
    if att is not None and books.recorded(att):
        return False
    return not any(os.path.lexists(os.path.join(data_dir, r.network, r.ip)) for r in held)
