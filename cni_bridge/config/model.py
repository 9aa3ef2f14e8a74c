"""The typed network configuration, built from a schema-valid document plus semantic checks."""

from __future__ import annotations

from ..records import record
from .. import versions
from ..errors import INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from ..network.naming import interface_name_problem
from ..firewall.portmap import PortMapping
from ..result import DNS, Result, Route, parse_result

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
    from ..ipam.ranges import RangeSet

DEFAULT_BRIDGE = "cnibr0"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"
HOST_LOCAL = "host-local"
DEFAULT_MASQ_BIT = 13
DEFAULT_STATE_DIR = "/run/cni-bridge"


@record(frozen=True)
class IpamConf:
    type: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...]
    data_dir: str
    resolv_conf: str

    @property
    def builtin(self) -> bool:
        return self.type == HOST_LOCAL


@record(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    bridge: str
    is_gateway: bool
    is_default_gateway: bool
    force_address: bool
    ip_masq: bool
    masq_exclude: tuple[str, ...]
    isolate: bool
    internal: bool
    state_dir: str
    mtu: int | None
    hairpin: bool
    promisc: bool
    vlan: int
    enable_dad: bool
    port_isolation: bool
    dns: DNS | None
    ipam: IpamConf | None
    firewall_backend: str  # "iptables", "nftables", "auto", or "" for the default (firewall/__init__.py)
    snat: bool
    mark_masq_bit: int
    external_set_mark_chain: str
    masq_all: bool
    log_file: str
    log_level: str
    port_mappings: tuple[PortMapping, ...]
    runtime_ips: tuple[str, ...]
    runtime_mac: str
    args_ips: tuple[str, ...]
    args_mac: str
    prev_result: Result | None
    valid_attachments: frozenset[tuple[str, str]] | None
    raw: dict[str, Any]


def canonical_mac(text: str) -> str | None:
    """`02:42:ac:11:00:02` from any 48-bit form Go's net.ParseMAC reads (colons, hyphens,
    dotted groups of four); None if `text` is none of them."""
    for separator, width in ((":", 2), ("-", 2), (".", 4)):
        parts = text.split(separator)
        if len(parts) * width == 12 and all(len(p) == width for p in parts):
            digits = "".join(parts).lower()
            if all(c in "0123456789abcdef" for c in digits):
                return ":".join(digits[i:i + 2] for i in range(0, 12, 2))
    return None


def _fail(path: str, why: str) -> CniError:
    return CniError(INVALID_CONFIG, f"{path}: {why}")


def _ip(text: str, path: str) -> str:
    """An address, optionally with a prefix length (validated, then dropped: the range's mask wins)."""
    import ipaddress
    try:
        return str(ipaddress.ip_interface(text).ip) if "/" in text else str(ipaddress.ip_address(text))
    except ValueError:
        raise _fail(path, f"{text!r} is not a valid IP address") from None


def _cidr(text: str, path: str) -> str:
    import ipaddress
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise _fail(path, f"{text!r} is not a valid CIDR") from None


def _route(obj: dict[str, Any], path: str) -> Route:
    import ipaddress
    try:
        network = ipaddress.ip_network(obj["dst"], strict=False)
    except ValueError:
        raise _fail(path + ".dst", f"{obj['dst']!r} is not a valid CIDR") from None
    gw = _ip(obj["gw"], path + ".gw") if obj.get("gw") else ""
    if gw and (":" in gw) != (network.version == 6):
        raise _fail(path + ".gw", f"{gw} is not of the family of {network}")
    return Route(dst=str(network), gw=gw, mtu=obj.get("mtu", 0), advmss=obj.get("advmss", 0),
                 priority=obj.get("priority", 0), table=obj.get("table"), scope=obj.get("scope"))


def _unsupported(doc: dict[str, Any]) -> None:
    """Reference keys whose other values we do not implement are refused, never ignored."""
    if doc.get("macspoofchk"):
        raise CniError(UNSUPPORTED_FIELD, "unsupported field macspoofchk: true",
                       "MAC spoof checking is not implemented by cni-bridge")
    for key in ("vlanTrunk", "disableContainerInterface", "conditionsV4", "conditionsV6"):
        if doc.get(key):
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field {key}: {doc[key]!r}",
                           "this reference plugin option is not implemented by cni-bridge")


FIREWALL_BACKENDS = ("iptables", "nftables")


def _firewall_backend(doc: dict[str, Any]) -> str:
    """"iptables", "nftables", "auto" or "" (nothing said): our firewallBackend reconciled with
    the reference keys ipMasqBackend (bridge) and backend (portmap), which name the same
    thing for one plugin that does both. Values the reference has no backend for are code 2;
    keys that disagree are code 7."""
    reference: dict[str, str] = {}
    for key, value in (("ipMasqBackend", doc.get("ipMasqBackend")), ("backend", doc.get("backend") or None)):
        if value is None:
            continue
        if value not in FIREWALL_BACKENDS:
            raise CniError(UNSUPPORTED_FIELD, f"unsupported field {key}: {value!r}",
                           'cni-bridge programs iptables or nftables: "iptables" or "nftables"')
        reference[key] = value
    ours = doc.get("firewallBackend") or ""
    said = [(key, value) for key, value in (("firewallBackend", ours), *reference.items()) if value in FIREWALL_BACKENDS]
    for key, value in said[1:]:
        if value != said[0][1]:
            raise _fail(key, f"{value!r} conflicts with {said[0][0]} {said[0][1]!r}: "
                             "one plugin has one firewall backend, set them alike or drop one")
    return said[0][1] if said else ours


def _ipam(doc: dict[str, Any], cni_version: str) -> IpamConf | None:
    ipam = doc.get("ipam")
    if not ipam or not ipam.get("type"):
        return None  # L2 only: `"ipam": {}` is the reference's way to say so
    sets: list[RangeSet] = []
    if ipam["type"] == HOST_LOCAL:
        from ..ipam.ranges import check_range_sets, parse_range, parse_range_set
        runtime = doc.get("runtimeConfig") or {}
        for i, raw_set in enumerate(runtime.get("ipRanges") or []):
            sets.append(parse_range_set(raw_set, f"runtimeConfig.ipRanges[{i}]"))
        if "subnet" in ipam:
            legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
            from ..ipam.ranges import RangeSet
            sets.append(RangeSet((parse_range(legacy, "ipam"),)))
        for i, raw_set in enumerate(ipam.get("ranges") or []):
            sets.append(parse_range_set(raw_set, f"ipam.ranges[{i}]"))
        if not sets:
            raise _fail("ipam", "no IP ranges specified (set ipam.ranges or ipam.subnet)")
        check_range_sets(sets, "ipam")
        if versions.is_legacy(cni_version):
            families = [s.family for s in sets]
            if families.count(4) > 1 or families.count(6) > 1:
                raise _fail("ipam.ranges", f"CNI version {cni_version} does not support more than 1 address per family")
    routes = tuple(_route(r, f"ipam.routes[{i}]") for i, r in enumerate(ipam.get("routes") or []))
    return IpamConf(type=ipam["type"], range_sets=tuple(sets), routes=routes,
                    data_dir=ipam.get("dataDir") or DEFAULT_DATA_DIR, resolv_conf=ipam.get("resolvConf", ""))


def _port_mappings(doc: dict[str, Any]) -> tuple[PortMapping, ...]:
    runtime = doc.get("runtimeConfig") or {}
    mappings = []
    for i, pm in enumerate(runtime.get("portMappings") or []):
        host_ip = pm.get("hostIP") or ""
        if host_ip:
            host_ip = _ip(host_ip, f"runtimeConfig.portMappings[{i}].hostIP")
        mappings.append(PortMapping(host_port=int(pm["hostPort"]), container_port=int(pm["containerPort"]),
                                    protocol=(pm.get("protocol") or "tcp").lower(), host_ip=host_ip))
    return tuple(mappings)


def _attachments(doc: dict[str, Any]) -> frozenset[tuple[str, str]] | None:
    key = "cni.dev/valid-attachments"
    if key not in doc:
        key = "cni.dev/attachments"  # the legacy key libcni also sends (spec bug #1101)
        if key not in doc:
            return None
    return frozenset((a["containerID"], a["ifname"]) for a in doc[key])


_UNSET: Any = object()


def build_netconf(doc: dict[str, Any], cni_version: str, raw: dict[str, Any] | None = None,
                  ipam: IpamConf | None = _UNSET) -> NetConf:
    """Turn a schema-valid canonical document into the model, applying the checks JSON Schema
    cannot express. `raw` is the document as the caller wrote it (for a delegated IPAM plugin,
    which reads it its own way); `ipam`, when given, replaces what `doc` says."""
    _unsupported(doc)
    firewall_backend = _firewall_backend(doc)
    if doc.get("hairpinMode") and doc.get("promiscMode"):
        raise _fail("hairpinMode", "cannot be combined with promiscMode: set at most one of them")
    if "externalSetMarkChain" in doc and "markMasqBit" in doc:
        raise _fail("externalSetMarkChain", "cannot be combined with markMasqBit")
    if doc.get("internal"):
        if (doc.get("runtimeConfig") or {}).get("portMappings"):
            raise _fail("runtimeConfig.portMappings", "ports cannot be published on an internal network")
        for key in ("ipMasq", "isDefaultGateway"):
            if doc.get(key):
                raise _fail(key, "cannot be combined with internal: an internal network has no way out")
    masq_exclude = tuple(_cidr(c, f"ipMasqExclude[{i}]") for i, c in enumerate(doc.get("ipMasqExclude") or []))
    runtime = doc.get("runtimeConfig") or {}
    args_cni = (doc.get("args") or {}).get("cni") or {}
    prev_result = None
    if doc.get("prevResult") is not None:
        prev_version = doc["prevResult"].get("cniVersion") or cni_version
        if prev_version not in versions.SUPPORTED_VERSIONS:
            raise CniError(INVALID_CONFIG, f"prevResult.cniVersion: {prev_version!r} is not a supported version",
                           "supported: " + ", ".join(versions.SUPPORTED_VERSIONS))
        prev_result = parse_result(doc["prevResult"], prev_version, "prevResult")
    dns = None
    if doc.get("dns"):
        d = doc["dns"]
        # Passed through unchecked, as the reference does: only the runtime reads them.
        dns = DNS(nameservers=list(d.get("nameservers", [])),
                  domain=d.get("domain", ""), search=list(d.get("search", [])), options=list(d.get("options", [])))
    bridge = doc.get("bridge") or DEFAULT_BRIDGE
    problem = interface_name_problem(bridge)
    if problem is not None:
        raise _fail("bridge", f"{bridge!r} {problem}")
    mtu = doc.get("mtu")
    if mtu is not None and mtu <= 0:
        mtu = None  # the reference's zero value: take the default
    if mtu is not None and mtu < 68:
        raise _fail("mtu", f"{mtu} is below 68, the smallest MTU IPv4 allows")
    if ipam is _UNSET:
        ipam = _ipam(doc, cni_version)
    if mtu is not None and mtu < 1280 and ipam and any(s.family == 6 for s in ipam.range_sets):
        raise _fail("mtu", f"{mtu} is below 1280, the minimum for IPv6 ranges")
    return NetConf(
        cni_version=cni_version,
        name=doc["name"],
        type=doc.get("type", ""),
        bridge=bridge,
        is_gateway=bool(doc.get("isGateway") or doc.get("isDefaultGateway")),
        is_default_gateway=bool(doc.get("isDefaultGateway")),
        force_address=bool(doc.get("forceAddress")),
        ip_masq=bool(doc.get("ipMasq")),
        masq_exclude=masq_exclude,
        isolate=bool(doc.get("isolate")),
        internal=bool(doc.get("internal")),
        state_dir=doc.get("stateDir") or DEFAULT_STATE_DIR,
        mtu=int(mtu) if mtu is not None else None,
        hairpin=bool(doc.get("hairpinMode")),
        promisc=bool(doc.get("promiscMode")),
        vlan=int(doc.get("vlan") or 0),
        enable_dad=bool(doc.get("enabledad")),
        port_isolation=bool(doc.get("portIsolation")),
        dns=dns,
        ipam=ipam,
        firewall_backend=firewall_backend,
        snat=doc.get("snat", True),
        mark_masq_bit=int(doc.get("markMasqBit", DEFAULT_MASQ_BIT)),
        external_set_mark_chain=doc.get("externalSetMarkChain", ""),
        masq_all=bool(doc.get("masqAll")),
        log_file=doc.get("logFile", ""),
        log_level=doc.get("logLevel", "warning"),
        port_mappings=_port_mappings(doc),
        runtime_ips=tuple(_ip(ip, "runtimeConfig.ips[]") for ip in runtime.get("ips") or []),
        runtime_mac=canonical_mac(runtime["mac"]) or "" if runtime.get("mac") else "",
        args_ips=tuple(_ip(ip, "args.cni.ips[]") for ip in args_cni.get("ips") or []),
        args_mac=canonical_mac(args_cni["mac"]) or "" if args_cni.get("mac") else "",
        prev_result=prev_result,
        valid_attachments=_attachments(doc),
        raw=doc if raw is None else raw,
    )
