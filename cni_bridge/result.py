"""One result model for every CNI version, parsed from and rendered to each of them.

0.1.0/0.2.0 carry `ip4`/`ip6` (one address per family, routes folded in); 0.3.x/0.4.0
carry `interfaces`/`ips` with `version`; 1.x drops `version`; 1.1.0 adds interface `mtu`,
`socketPath`, `pciID` and route `mtu`, `advmss`, `priority`, `table`, `scope`.
"""

from __future__ import annotations

from .records import field, record
from . import versions
from .errors import INVALID_CONFIG, RESULT_CONVERSION, CniError

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record()
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@record()
class IPConfig:
    address: str  # "ip/prefix"
    gateway: str = ""
    interface: int | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def prefixlen(self) -> int:
        return int(self.address.split("/", 1)[1])


@record()
class Route:
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.dst else 4


@record()
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@record()
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)


# ---------------------------------------------------------------- parsing

class _Reader:
    """Typed access to decoded JSON that names the failing path in its errors."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, why: str) -> CniError:
        return CniError(INVALID_CONFIG, f"{self.path}{where}: {why}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be an object")
        return value

    def lst(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, "must be a list")
        return value

    def string(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(where, "must be a string")
        return value

    def integer(self, value: Any, where: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, "must be an integer")
        return value

    def cidr(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        import ipaddress
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise self.fail(where, f"{text!r} is not a valid CIDR address") from None
        if "/" not in text:
            raise self.fail(where, f"{text!r} has no prefix length")
        return f"{iface.ip}/{iface.network.prefixlen}"

    def ip(self, value: Any, where: str) -> str:
        text = self.string(value, where)
        if not text:
            return ""
        import ipaddress
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            raise self.fail(where, f"{text!r} is not a valid IP address") from None


def _parse_dns(r: _Reader, value: Any) -> DNS:
    if value is None:
        return DNS()
    d = r.obj(value, ".dns")
    return DNS(
        nameservers=[r.string(s, ".dns.nameservers[]") for s in r.lst(d.get("nameservers"), ".dns.nameservers")],
        domain=r.string(d.get("domain"), ".dns.domain"),
        search=[r.string(s, ".dns.search[]") for s in r.lst(d.get("search"), ".dns.search")],
        options=[r.string(s, ".dns.options[]") for s in r.lst(d.get("options"), ".dns.options")],
    )


def _parse_route(r: _Reader, value: Any, where: str) -> Route:
    d = r.obj(value, where)
    return Route(
        dst=r.cidr(d.get("dst"), where + ".dst"),
        gw=r.ip(d.get("gw"), where + ".gw"),
        mtu=r.integer(d.get("mtu"), where + ".mtu") or 0,
        advmss=r.integer(d.get("advmss"), where + ".advmss") or 0,
        priority=r.integer(d.get("priority"), where + ".priority") or 0,
        table=r.integer(d.get("table"), where + ".table"),
        scope=r.integer(d.get("scope"), where + ".scope"),
    )


def _parse_legacy(r: _Reader, data: dict[str, Any]) -> Result:
    result = Result(dns=_parse_dns(r, data.get("dns")))
    for key, family in (("ip4", 4), ("ip6", 6)):
        if data.get(key) is None:
            continue
        block = r.obj(data[key], "." + key)
        ipc = IPConfig(address=r.cidr(block.get("ip"), f".{key}.ip"),
                       gateway=r.ip(block.get("gateway"), f".{key}.gateway"))
        if ipc.family != family:
            raise r.fail(f".{key}.ip", f"is not an IPv{family} address")
        if ipc.gateway and (":" in ipc.gateway) != (family == 6):
            raise r.fail(f".{key}.gateway", f"is not an IPv{family} address")
        result.ips.append(ipc)
        for i, route in enumerate(r.lst(block.get("routes"), f".{key}.routes")):
            result.routes.append(_parse_route(r, route, f".{key}.routes[{i}]"))
    return result


def _parse_current(r: _Reader, data: dict[str, Any]) -> Result:
    result = Result(dns=_parse_dns(r, data.get("dns")))
    for i, value in enumerate(r.lst(data.get("interfaces"), ".interfaces")):
        where = f".interfaces[{i}]"
        d = r.obj(value, where)
        name = r.string(d.get("name"), where + ".name")
        if not name:
            raise r.fail(where + ".name", "is required")
        result.interfaces.append(Interface(
            name=name,
            mac=r.string(d.get("mac"), where + ".mac"),
            mtu=r.integer(d.get("mtu"), where + ".mtu") or 0,
            sandbox=r.string(d.get("sandbox"), where + ".sandbox"),
            socket_path=r.string(d.get("socketPath"), where + ".socketPath"),
            pci_id=r.string(d.get("pciID"), where + ".pciID"),
        ))
    for i, value in enumerate(r.lst(data.get("ips"), ".ips")):
        where = f".ips[{i}]"
        d = r.obj(value, where)
        ipc = IPConfig(address=r.cidr(d.get("address"), where + ".address"),
                       gateway=r.ip(d.get("gateway"), where + ".gateway"),
                       interface=r.integer(d.get("interface"), where + ".interface"))
        version = d.get("version")
        if version is not None and version not in ("4", "6"):
            raise r.fail(where + ".version", f"{version!r} is not \"4\" or \"6\"")
        if version is not None and version != str(ipc.family):
            raise r.fail(where + ".version", f"\"{version}\" does not match address {ipc.address}")
        if ipc.gateway and (":" in ipc.gateway) != (ipc.family == 6):
            raise r.fail(where + ".gateway", "is not of the address's family")
        if ipc.interface is not None and not 0 <= ipc.interface < len(result.interfaces):
            raise r.fail(where + ".interface", f"{ipc.interface} is not an index into interfaces")
        result.ips.append(ipc)
    for i, value in enumerate(r.lst(data.get("routes"), ".routes")):
        result.routes.append(_parse_route(r, value, f".routes[{i}]"))
    return result


def _fields(*names: str) -> dict[str, Any]:
    return {"properties": {name: {} for name in names}}


_ROUTE_SHAPE = _fields("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
_LEGACY_IP_SHAPE = {"properties": {"ip": {}, "gateway": {}, "routes": {"items": _ROUTE_SHAPE}}}
# Where a result's keys are, for reading them as Go does (config/gojson.py): results come
# from Go plugins and runtimes, and Go matches their keys case-insensitively.
RESULT_SHAPE = {"properties": {
    "cniVersion": {},
    "interfaces": {"items": _fields("name", "mac", "mtu", "sandbox", "socketPath", "pciID")},
    "ips": {"items": _fields("version", "interface", "address", "gateway")},
    "routes": {"items": _ROUTE_SHAPE},
    "dns": _fields("nameservers", "domain", "search", "options"),
    "ip4": _LEGACY_IP_SHAPE,
    "ip6": _LEGACY_IP_SHAPE,
}}


def parse_result(data: Any, version: str, path: str = "result") -> Result:
    """Parse a result written in `version` (the caller has checked it is supported)."""
    r = _Reader(path)
    from .config.gojson import canonicalize
    obj, _ = canonicalize(r.obj(data, ""), RESULT_SHAPE)
    if versions.is_legacy(version):
        return _parse_legacy(r, obj)
    return _parse_current(r, obj)


# ---------------------------------------------------------------- rendering

def _render_dns(dns: DNS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if dns.nameservers:
        out["nameservers"] = list(dns.nameservers)
    if dns.domain:
        out["domain"] = dns.domain
    if dns.search:
        out["search"] = list(dns.search)
    if dns.options:
        out["options"] = list(dns.options)
    return out


def _render_route(route: Route, with_1_1_fields: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": route.dst}
    if route.gw:
        out["gw"] = route.gw
    if with_1_1_fields:
        for key, value in (("mtu", route.mtu), ("advmss", route.advmss), ("priority", route.priority)):
            if value:
                out[key] = value
        if route.table is not None:
            out["table"] = route.table
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def _render_legacy(result: Result, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    for key, family in (("ip4", 4), ("ip6", 6)):
        first = next((ipc for ipc in result.ips if ipc.family == family), None)
        if first is None:
            continue
        block: dict[str, Any] = {"ip": first.address}
        if first.gateway:
            block["gateway"] = first.gateway
        routes = [_render_route(rt, False) for rt in result.routes if rt.family == family]
        if routes:
            block["routes"] = routes
        out[key] = block
    if "ip4" not in out and "ip6" not in out:
        raise CniError(RESULT_CONVERSION, f"cannot convert result to CNI version {version}: no valid IP addresses",
                       "0.1.0 and 0.2.0 results need an IP address; use cniVersion 0.3.0 or later for an L2-only network")
    dns = _render_dns(result.dns)
    if dns:
        out["dns"] = dns
    return out


def _render_current(result: Result, version: str) -> dict[str, Any]:
    with_version = not versions.at_least(version, "1.0.0")
    with_1_1 = versions.at_least(version, "1.1.0")
    out: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        interfaces = []
        for iface in result.interfaces:
            entry: dict[str, Any] = {"name": iface.name}
            if iface.mac:
                entry["mac"] = iface.mac
            if with_1_1 and iface.mtu:
                entry["mtu"] = iface.mtu
            if iface.sandbox:
                entry["sandbox"] = iface.sandbox
            if with_1_1 and iface.socket_path:
                entry["socketPath"] = iface.socket_path
            if with_1_1 and iface.pci_id:
                entry["pciID"] = iface.pci_id
            interfaces.append(entry)
        out["interfaces"] = interfaces
    ips = []
    for ipc in result.ips:
        ip_entry: dict[str, Any] = {}
        if with_version:
            ip_entry["version"] = str(ipc.family)
        if ipc.interface is not None:
            ip_entry["interface"] = ipc.interface
        ip_entry["address"] = ipc.address
        if ipc.gateway:
            ip_entry["gateway"] = ipc.gateway
        ips.append(ip_entry)
    out["ips"] = ips
    if result.routes:
        out["routes"] = [_render_route(rt, with_1_1) for rt in result.routes]
    dns = _render_dns(result.dns)
    if dns:
        out["dns"] = dns
    return out


def render_result(result: Result, version: str) -> dict[str, Any]:
    """The result as a plugin speaking `version` prints it."""
    if versions.is_legacy(version):
        return _render_legacy(result, version)
    return _render_current(result, version)
