"""The firewall facts of one attachment, the same for every backend, and their validation."""

from __future__ import annotations

from ..errors import INVALID_CONFIG, CniError
from ..records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .portmap import PortMapping

PROTOCOLS = ("tcp", "udp", "sctp")
# Every backend tags what it installs with these words, so an operator greps one format and
# GC finds an attachment's leftovers by them: "cni-bridge net=<net> id=<cid> if=<ifname>".
COMMENT_PREFIX = "cni-bridge "
SHARED_COMMENT_PREFIX = "cni-bridge shared="
WILDCARD = {4: "0.0.0.0", 6: "::"}


@record(frozen=True)
class AttachmentRules:
    """The firewall-relevant facts of one attachment (network, container ID, ifname).

    ``ips`` are the container's addresses with their prefix length; ``subnets`` the
    network's CIDRs (traffic to them is never masqueraded; defaults to the subnets of
    ``ips``). ``port_mappings`` take objects with host_port, container_port, protocol
    and host_ip ("" for both families, 0.0.0.0 or :: for one family's wildcard).
    """

    network: str
    bridge: str
    container_id: str
    ifname: str
    ips: tuple[tuple[str, int], ...] = ()
    subnets: tuple[str, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    ip_masq: bool = False
    masq_exclude: tuple[str, ...] = ()
    snat: bool = True
    mark_masq_bit: int = 13
    external_set_mark_chain: str = ""
    masq_all: bool = False
    isolate: bool = False
    internal: bool = False


@record(frozen=True)
class FamilyFacts:
    """An attachment's facts grouped by address family (4 and 6): what every rule scheme
    builds from. ``mappings`` pair each port mapping with the host address it is published
    on in that family ("" for any)."""

    addresses: dict[int, list[tuple[str, str]]]  # (container address, its subnet)
    subnets: dict[int, list[str]]
    excludes: dict[int, list[str]]
    mappings: dict[int, list[tuple[PortMapping, str]]]


def by_family(rules: AttachmentRules) -> FamilyFacts:
    """The attachment's addresses, subnets, masquerade exclusions and published ports, per family."""
    from .portmap import mapping_families
    facts = FamilyFacts({4: [], 6: []}, {4: [], 6: []}, {4: [], 6: []}, {4: [], 6: []})
    for ip, prefixlen in rules.ips:
        family, address = parse_address(ip, "ips[]")
        facts.addresses[family].append((address, parse_network(f"{address}/{prefixlen}", "ips[]")[1]))
    for cidr in rules.subnets:
        family, network = parse_network(cidr, "subnets[]")
        facts.subnets[family].append(network)
    for cidr in rules.masq_exclude:
        family, network = parse_network(cidr, "ipMasqExclude[]")
        facts.excludes[family].append(network)
    for i, pm in enumerate(rules.port_mappings):
        for family, address in mapping_families(pm.host_ip, f"runtimeConfig.portMappings[{i}].hostIP"):
            facts.mappings[family].append((pm, address))
    return facts


def parse_attachment_comment(comment: str) -> tuple[str, str, str] | None:
    """(network, container ID, ifname) of an attachment comment, None if it is not one."""
    parts = comment.split(" ")
    if len(parts) != 4 or parts[0] != COMMENT_PREFIX.strip():
        return None
    fields = []
    for part, name in zip(parts[1:], ("net=", "id=", "if=")):
        if not part.startswith(name):
            return None
        fields.append(part[len(name):])
    return fields[0], fields[1], fields[2]


def fail(what: str) -> CniError:
    return CniError(INVALID_CONFIG, what)


def parse_address(text: str, what: str) -> tuple[int, str]:
    """(family, canonical text) of an IP address; CniError(INVALID_CONFIG) naming `what`."""
    import ipaddress
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise fail(f"{what}: {text!r} is not a valid IP address") from None
    return address.version, str(address)


def parse_network(text: str, what: str) -> tuple[int, str]:
    import ipaddress
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise fail(f"{what}: {text!r} is not a valid CIDR") from None
    return network.version, str(network)


def check_chain_name(name: str, what: str) -> None:
    # XT_EXTENSION_MAXNAMELEN is 29 with the NUL; nftables allows more, iptables is the bound.
    if (not name or len(name) > 28 or name[0] in "-!"
            or any(not (c.isascii() and c.isprintable()) or c.isspace() or c in "\"'\\" for c in name)):
        raise fail(f"{what}: {name!r} is not a valid chain name")


def validate(rules: AttachmentRules) -> None:
    """What a config reaching the firewall must satisfy, whoever built the AttachmentRules."""
    from ..network.naming import interface_name_problem
    problem = interface_name_problem(rules.bridge)
    if problem:
        raise fail(f"bridge: {rules.bridge!r} {problem}")
    if rules.internal and rules.port_mappings:
        raise fail("runtimeConfig.portMappings: ports cannot be published on an internal network")
    if not 0 <= rules.mark_masq_bit <= 31:
        raise fail(f"markMasqBit: {rules.mark_masq_bit} is not between 0 and 31")
    if rules.external_set_mark_chain:
        check_chain_name(rules.external_set_mark_chain, "externalSetMarkChain")
    for i, pm in enumerate(rules.port_mappings):
        where = f"runtimeConfig.portMappings[{i}]"
        if pm.protocol not in PROTOCOLS:
            raise fail(f"{where}.protocol: {pm.protocol!r} is not one of tcp, udp, sctp")
        for name, port in (("hostPort", pm.host_port), ("containerPort", pm.container_port)):
            if not 1 <= port <= 65535:
                raise fail(f"{where}.{name}: {port} is not between 1 and 65535")
