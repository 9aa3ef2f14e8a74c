"""Range and range-set models for host-local IPAM, and their parsing from JSON.

Defaults and checks follow the reference host-local (`backend/allocator/range.go`,
`range_set.go`), plus a few checks the reference lacks (gateway inside the subnet,
rangeStart not after rangeEnd). Every parse error is a CniError(INVALID_CONFIG)
whose message starts with the JSON path of the offending value, so a user can find
it in a config with several range sets.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from ..errors import INVALID_CONFIG, CniError
from ..records import record

# typing costs milliseconds at every start; the aliases only matter to mypy.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
    IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

# Go's net.IP treats ::ffff:a.b.c.d as the IPv4 address a.b.c.d; a subnet inside
# this block would make file names (dotted IPv4) disagree with the set's family.
_V4_MAPPED_BLOCK = ipaddress.IPv6Network("::ffff:0:0/96")


def canonical_ip(ip: IPAddress) -> IPAddress:
    """Fold an IPv4-mapped IPv6 address to IPv4, as the reference's canonicalizeIP does."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ip_key(ip: IPAddress) -> tuple[int, int]:
    """Sort key that orders IPv4 before IPv6 without comparing across families."""
    return (ip.version, int(ip))


@record(frozen=True)
class IPRange:
    """One contiguous allocatable range inside a subnet; both bounds are inclusive."""

    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress | None

    def __post_init__(self) -> None:
        # The allocator's iteration relies on these; parse_range reports them
        # with friendly messages first, so a failure here is a programming error.
        if self.range_start not in self.subnet or self.range_end not in self.subnet:
            raise ValueError(f"range {self} is not inside subnet {self.subnet}")
        if int(self.range_start) > int(self.range_end):
            raise ValueError(f"range {self} has rangeStart after rangeEnd")
        if self.gateway is not None and self.gateway.version != self.subnet.version:
            raise ValueError(f"gateway {self.gateway} is not of the subnet's family")

    @property
    def family(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        """True if ip is allocatable space of this range (subnet and bounds)."""
        if ip.version != self.subnet.version:
            return False
        return ip in self.subnet and int(self.range_start) <= int(ip) <= int(self.range_end)

    def size(self) -> int:
        return int(self.range_end) - int(self.range_start) + 1

    def overlaps(self, other: IPRange) -> bool:
        # Same test as the reference: the start..end intervals intersect.
        if self.family != other.family:
            return False
        return int(self.range_start) <= int(other.range_end) and int(other.range_start) <= int(self.range_end)

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"


@record(frozen=True)
class RangeSet:
    """Ranges of one family from which a single address per attachment is taken."""

    ranges: tuple[IPRange, ...]

    def __post_init__(self) -> None:
        if not self.ranges:
            raise ValueError("empty range set")
        if len({r.family for r in self.ranges}) != 1:
            raise ValueError("mixed address families in one range set")

    @property
    def family(self) -> int:
        return self.ranges[0].family

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def range_for(self, ip: IPAddress) -> IPRange | None:
        """The range holding ip, or None; ranges in a valid set never overlap."""
        for r in self.ranges:
            if r.contains(ip):
                return r
        return None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def _json_type(value: object) -> str:
    # Name JSON types as a config author sees them, not Python's names.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fail(path: str, msg: str) -> CniError:
    return CniError(INVALID_CONFIG, f"{path}: {msg}")


def _parse_subnet(value: object, path: str) -> IPNetwork:
    if not isinstance(value, str):
        raise _fail(path, f"expected a CIDR string, got {_json_type(value)}")
    quoted = json.dumps(value)
    addr, sep, prefix = value.partition("/")
    # ipaddress also accepts a bare address or a dotted netmask; Go's ParseCIDR,
    # and therefore the reference, accepts only address/decimal-prefix.
    if not sep or not prefix or not (prefix.isascii() and prefix.isdigit()) or "%" in addr:
        raise _fail(path, f"{quoted} is not a valid CIDR")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise _fail(path, f"{quoted} is not a valid CIDR") from None
    net = iface.network
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_V4_MAPPED_BLOCK):
        raise _fail(path, f"{quoted} is an IPv4-mapped IPv6 network; write it in IPv4 form")
    # /31, /32, /127 and /128 leave nothing once network (and broadcast) are excluded.
    if net.prefixlen > net.max_prefixlen - 2:
        raise _fail(path, f"network {net} too small to allocate from")
    if iface.ip != net.network_address:
        raise _fail(path, f"{quoted} has host bits set (network address is {net})")
    return net


def _parse_ip(value: object, path: str) -> IPAddress:
    if not isinstance(value, str):
        raise _fail(path, f"expected an IP address string, got {_json_type(value)}")
    try:
        if "%" in value:
            raise ValueError("zone not allowed")
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise _fail(path, f"{json.dumps(value)} is not a valid IP address") from None
    return canonical_ip(ip)


def parse_range(obj: object, path: str) -> IPRange:
    """Build an IPRange from `{"subnet", "rangeStart", "rangeEnd", "gateway"}`.

    Unknown keys are ignored, as the reference does.
    """
    if not isinstance(obj, dict):
        raise _fail(path, f"expected an object, got {_json_type(obj)}")
    if "subnet" not in obj or obj["subnet"] is None:
        raise _fail(f"{path}.subnet", "required key is missing")
    subnet = _parse_subnet(obj["subnet"], f"{path}.subnet")
    first = subnet.network_address + 1
    # IPv6 has no broadcast, so its all-ones address is a usable host.
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address

    bounds: dict[str, IPAddress] = {}
    for key, default in (("rangeStart", first), ("rangeEnd", last), ("gateway", first)):
        raw = obj.get(key)
        if raw is None:
            bounds[key] = default
            continue
        ip = _parse_ip(raw, f"{path}.{key}")
        if ip not in subnet:
            # The reference never checks the gateway; an off-subnet gateway
            # yields an unroutable default route, so we refuse it.
            raise _fail(f"{path}.{key}", f"{ip} is not in subnet {subnet}")
        bounds[key] = ip

    start, end = bounds["rangeStart"], bounds["rangeEnd"]
    if int(start) > int(end):
        raise _fail(f"{path}.rangeStart", f"{start} is after rangeEnd {end}")
    return IPRange(subnet=subnet, range_start=start, range_end=end, gateway=bounds["gateway"])


def parse_range_set(obj: object, path: str) -> RangeSet:
    """Build a RangeSet from a JSON array of ranges."""
    if not isinstance(obj, list):
        raise _fail(path, f"expected an array of ranges, got {_json_type(obj)}")
    if not obj:
        raise _fail(path, "empty range set")
    ranges: list[IPRange] = []
    for i, item in enumerate(obj):
        item_path = f"{path}[{i}]"
        r = parse_range(item, item_path)
        if ranges and r.family != ranges[0].family:
            raise _fail(
                item_path,
                f"mixed address families (IPv{r.family} range in an IPv{ranges[0].family} range set)",
            )
        for j, earlier in enumerate(ranges):
            if r.overlaps(earlier):
                raise CniError(
                    INVALID_CONFIG,
                    f"{item_path} overlaps with {path}[{j}]",
                    f"{r} and {earlier} overlap",
                )
        ranges.append(r)
    return RangeSet(tuple(ranges))


def check_range_sets(sets: Sequence[RangeSet], path: str | Sequence[str]) -> None:
    """Refuse two range sets that share an address.

    path is either the JSON path of the array holding all sets (each set is then
    named path[i]) or one name per set, for configs that merge sets from several
    places (runtimeConfig.ipRanges, the legacy top-level subnet, ipam.ranges).
    """
    if isinstance(path, str):
        names = [f"{path}[{i}]" for i in range(len(sets))]
    else:
        names = list(path)
        if len(names) != len(sets):
            raise ValueError("check_range_sets needs one path per range set")
    for i, later in enumerate(sets):
        for j in range(i):
            if later.overlaps(sets[j]):
                raise CniError(
                    INVALID_CONFIG,
                    f"{names[i]} overlaps with {names[j]}",
                    f"{later} and {sets[j]} overlap",
                )
