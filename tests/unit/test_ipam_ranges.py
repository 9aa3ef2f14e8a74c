"""Range parsing, defaults and validation for the built-in host-local IPAM."""

from __future__ import annotations

import ipaddress

import pytest

from cni_bridge.errors import INVALID_CONFIG, CniError
from cni_bridge.ipam.ranges import (
    IPRange,
    RangeSet,
    check_range_sets,
    parse_range,
    parse_range_set,
)

pytestmark = pytest.mark.unit

P = "ipam.ranges[0][0]"


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


def config_error(obj: object, path: str = P) -> CniError:
    with pytest.raises(CniError) as info:
        parse_range(obj, path)
    assert info.value.code == INVALID_CONFIG
    return info.value


# -- defaults --------------------------------------------------------------


def test_ipv4_defaults() -> None:
    r = parse_range({"subnet": "10.0.0.0/24"}, P)
    assert r.subnet == ipaddress.ip_network("10.0.0.0/24")
    assert r.range_start == ip("10.0.0.1")
    # IPv4 broadcast is excluded.
    assert r.range_end == ip("10.0.0.254")
    assert r.gateway == ip("10.0.0.1")
    assert str(r) == "10.0.0.1-10.0.0.254"


def test_ipv6_defaults_include_all_ones_address() -> None:
    r = parse_range({"subnet": "fd00::/126"}, P)
    assert r.range_start == ip("fd00::1")
    assert r.range_end == ip("fd00::3")
    assert r.gateway == ip("fd00::1")
    big = parse_range({"subnet": "fd00:1::/64"}, P)
    assert big.range_end == ip("fd00:1::ffff:ffff:ffff:ffff")


def test_explicit_values_are_kept() -> None:
    r = parse_range(
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20", "gateway": "10.0.0.254"},
        P,
    )
    assert (r.range_start, r.range_end, r.gateway) == (ip("10.0.0.10"), ip("10.0.0.20"), ip("10.0.0.254"))


def test_gateway_defaults_to_network_plus_one_even_with_range_start() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}, P)
    assert r.gateway == ip("10.0.0.1")
    assert r.range_end == ip("10.0.0.254")


def test_null_values_mean_default() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": None, "gateway": None}, P)
    assert r.range_start == ip("10.0.0.1") and r.gateway == ip("10.0.0.1")


def test_unknown_keys_are_ignored() -> None:
    parse_range({"subnet": "10.0.0.0/24", "comment": "x"}, P)


def test_smallest_usable_networks() -> None:
    v4 = parse_range({"subnet": "10.0.0.0/30"}, P)
    assert str(v4) == "10.0.0.1-10.0.0.2"
    v6 = parse_range({"subnet": "fd00::/126"}, P)
    assert str(v6) == "fd00::1-fd00::3"


def test_ipv4_mapped_bounds_fold_to_ipv4() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": "::ffff:10.0.0.5"}, P)
    assert r.range_start == ip("10.0.0.5")


# -- errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    "subnet",
    ["10.0.0.0/33", "10.0.0.0", "10.0.0.0/", "10.0.0.0/255.255.255.0", "bogus/24", "", "10.0.0.0/2x",
     "fd00::/129", "fe80::%eth0/64", "010.0.0.0/24"],
)
def test_invalid_cidr(subnet: str) -> None:
    err = config_error({"subnet": subnet})
    assert err.msg == f'{P}.subnet: "{subnet}" is not a valid CIDR'


def test_invalid_cidr_exact_message() -> None:
    assert config_error({"subnet": "10.0.0.0/33"}).msg == 'ipam.ranges[0][0].subnet: "10.0.0.0/33" is not a valid CIDR'


def test_subnet_missing_or_wrong_type() -> None:
    assert config_error({}).msg == f"{P}.subnet: required key is missing"
    assert config_error({"subnet": None}).msg == f"{P}.subnet: required key is missing"
    assert config_error({"subnet": 24}).msg == f"{P}.subnet: expected a CIDR string, got number"


def test_range_not_an_object() -> None:
    assert config_error(["10.0.0.0/24"]).msg == f"{P}: expected an object, got array"


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"])
def test_network_too_small(subnet: str) -> None:
    assert config_error({"subnet": subnet}).msg == f"{P}.subnet: network {subnet} too small to allocate from"


def test_host_bits_set() -> None:
    err = config_error({"subnet": "10.0.0.5/24"})
    assert err.msg == f'{P}.subnet: "10.0.0.5/24" has host bits set (network address is 10.0.0.0/24)'
    err6 = config_error({"subnet": "fd00::1/64"})
    assert err6.msg == f'{P}.subnet: "fd00::1/64" has host bits set (network address is fd00::/64)'


def test_ipv4_mapped_subnet_rejected() -> None:
    assert "IPv4-mapped" in config_error({"subnet": "::ffff:10.0.0.0/120"}).msg


@pytest.mark.parametrize("key", ["rangeStart", "rangeEnd", "gateway"])
def test_address_outside_subnet(key: str) -> None:
    err = config_error({"subnet": "10.0.0.0/24", key: "10.1.0.5"})
    assert err.msg == f"{P}.{key}: 10.1.0.5 is not in subnet 10.0.0.0/24"


def test_range_start_message_from_brief() -> None:
    err = config_error({"subnet": "10.0.0.0/24", "rangeStart": "10.1.0.5"})
    assert err.msg == "ipam.ranges[0][0].rangeStart: 10.1.0.5 is not in subnet 10.0.0.0/24"


def test_address_of_other_family_is_outside_subnet() -> None:
    err = config_error({"subnet": "10.0.0.0/24", "rangeEnd": "fd00::5"})
    assert err.msg == f"{P}.rangeEnd: fd00::5 is not in subnet 10.0.0.0/24"


@pytest.mark.parametrize("key", ["rangeStart", "rangeEnd", "gateway"])
def test_invalid_address(key: str) -> None:
    assert config_error({"subnet": "10.0.0.0/24", key: "10.0.0.300"}).msg == (
        f'{P}.{key}: "10.0.0.300" is not a valid IP address'
    )
    assert config_error({"subnet": "10.0.0.0/24", key: 5}).msg == (
        f"{P}.{key}: expected an IP address string, got number"
    )


def test_range_start_after_range_end() -> None:
    err = config_error({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.5"})
    assert err.msg == f"{P}.rangeStart: 10.0.0.9 is after rangeEnd 10.0.0.5"


def test_range_start_after_default_range_end() -> None:
    # The reference accepts this and hands out the broadcast address.
    err = config_error({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.255"})
    assert err.msg == f"{P}.rangeStart: 10.0.0.255 is after rangeEnd 10.0.0.254"


def test_gateway_inside_subnet_but_outside_range_is_fine() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "gateway": "10.0.0.1"}, P)
    assert not r.contains(ip("10.0.0.1"))


def test_path_is_used_verbatim() -> None:
    err = config_error({"subnet": "x"}, path="runtimeConfig.ipRanges[2][1]")
    assert err.msg.startswith('runtimeConfig.ipRanges[2][1].subnet: "x"')


# -- range sets ------------------------------------------------------------


def test_range_set_str_and_family() -> None:
    rs = parse_range_set(
        [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.2"}, {"subnet": "10.1.0.0/24"}],
        "ipam.ranges[0]",
    )
    assert str(rs) == "10.0.0.2-10.0.0.254,10.1.0.1-10.1.0.254"
    assert rs.family == 4
    assert parse_range_set([{"subnet": "fd00::/64"}], "x").family == 6


def test_range_set_errors() -> None:
    with pytest.raises(CniError) as info:
        parse_range_set([], "ipam.ranges[0]")
    assert (info.value.code, info.value.msg) == (INVALID_CONFIG, "ipam.ranges[0]: empty range set")
    with pytest.raises(CniError) as info:
        parse_range_set({"subnet": "10.0.0.0/24"}, "ipam.ranges[0]")
    assert info.value.msg == "ipam.ranges[0]: expected an array of ranges, got object"


def test_range_set_item_errors_carry_the_item_path() -> None:
    with pytest.raises(CniError) as info:
        parse_range_set([{"subnet": "10.0.0.0/24"}, {"subnet": "10.1.0.0/33"}], "ipam.ranges[3]")
    assert info.value.msg == 'ipam.ranges[3][1].subnet: "10.1.0.0/33" is not a valid CIDR'


def test_mixed_families() -> None:
    with pytest.raises(CniError) as info:
        parse_range_set([{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}], "ipam.ranges[0]")
    assert info.value.code == INVALID_CONFIG
    assert info.value.msg == "ipam.ranges[0][1]: mixed address families (IPv6 range in an IPv4 range set)"


def test_overlap_inside_a_set() -> None:
    with pytest.raises(CniError) as info:
        parse_range_set(
            [{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}],
            "ipam.ranges[0]",
        )
    assert info.value.code == INVALID_CONFIG
    assert info.value.msg == "ipam.ranges[0][1] overlaps with ipam.ranges[0][0]"
    assert info.value.details == "10.0.0.1-10.0.0.126 and 10.0.0.1-10.0.0.254 overlap"


def test_disjoint_ranges_of_one_subnet_are_fine() -> None:
    rs = parse_range_set(
        [
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"},
        ],
        "ipam.ranges[0]",
    )
    assert len(rs.ranges) == 2


def test_touching_ranges_overlap() -> None:
    with pytest.raises(CniError, match=r"\[0\]\[1\] overlaps with ipam.ranges\[0\]\[0\]"):
        parse_range_set(
            [
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"},
                {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"},
            ],
            "ipam.ranges[0]",
        )


def test_overlap_between_sets() -> None:
    sets = [
        parse_range_set([{"subnet": "10.0.0.0/24"}], "ipam.ranges[0]"),
        parse_range_set([{"subnet": "fd00::/64"}], "ipam.ranges[1]"),
        parse_range_set([{"subnet": "10.0.0.0/16"}], "ipam.ranges[2]"),
    ]
    check_range_sets(sets[:2], "ipam.ranges")
    with pytest.raises(CniError) as info:
        check_range_sets(sets, "ipam.ranges")
    assert info.value.code == INVALID_CONFIG
    assert info.value.msg == "ipam.ranges[2] overlaps with ipam.ranges[0]"


def test_overlap_between_sets_exact_brief_message() -> None:
    a = parse_range_set([{"subnet": "10.0.0.0/24"}], "ipam.ranges[0]")
    b = parse_range_set([{"subnet": "10.0.0.128/25"}], "ipam.ranges[1]")
    with pytest.raises(CniError) as info:
        check_range_sets([a, b], "ipam.ranges")
    assert info.value.msg == "ipam.ranges[1] overlaps with ipam.ranges[0]"


def test_check_range_sets_with_names_per_set() -> None:
    a = parse_range_set([{"subnet": "10.0.0.0/24"}], "runtimeConfig.ipRanges[0]")
    b = parse_range_set([{"subnet": "10.0.0.0/24"}], "ipam.ranges[0]")
    with pytest.raises(CniError) as info:
        check_range_sets([a, b], ["runtimeConfig.ipRanges[0]", "ipam.ranges[0]"])
    assert info.value.msg == "ipam.ranges[0] overlaps with runtimeConfig.ipRanges[0]"
    with pytest.raises(ValueError):
        check_range_sets([a, b], ["only-one"])


def test_sets_with_disjoint_ranges_in_one_subnet_do_not_overlap() -> None:
    a = parse_range_set([{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.99"}], "a")
    b = parse_range_set([{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}], "b")
    check_range_sets([a, b], "ipam.ranges")


# -- containment and model invariants --------------------------------------


def test_contains_honours_range_bounds() -> None:
    r = parse_range({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"}, P)
    assert r.contains(ip("10.0.0.10")) and r.contains(ip("10.0.0.20"))
    assert not r.contains(ip("10.0.0.9")) and not r.contains(ip("10.0.0.21"))
    assert not r.contains(ip("10.1.0.15"))
    assert not r.contains(ip("fd00::10"))
    rs = RangeSet((r,))
    assert rs.contains(ip("10.0.0.15")) and not rs.contains(ip("10.0.0.5"))
    assert rs.range_for(ip("10.0.0.15")) is r
    assert rs.range_for(ip("10.0.0.5")) is None


def test_models_refuse_inconsistent_values() -> None:
    net = ipaddress.ip_network("10.0.0.0/24")
    with pytest.raises(ValueError):
        IPRange(net, ip("10.0.0.9"), ip("10.0.0.5"), None)
    with pytest.raises(ValueError):
        IPRange(net, ip("10.0.0.1"), ip("10.0.1.5"), None)
    with pytest.raises(ValueError):
        IPRange(net, ip("10.0.0.1"), ip("10.0.0.5"), ip("fd00::1"))
    with pytest.raises(ValueError):
        RangeSet(())
    v6 = parse_range({"subnet": "fd00::/64"}, P)
    v4 = parse_range({"subnet": "10.0.0.0/24"}, P)
    with pytest.raises(ValueError):
        RangeSet((v4, v6))


def test_models_are_frozen_and_hashable() -> None:
    r = parse_range({"subnet": "10.0.0.0/24"}, P)
    with pytest.raises(AttributeError):
        r.gateway = None  # type: ignore[misc]
    assert len({RangeSet((r,)), RangeSet((r,))}) == 1
