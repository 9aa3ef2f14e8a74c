"""Result conversion between every pair of CNI versions, and prevResult parsing errors.

The expected documents are written out here from the spec's conversion rules
(reference §1.5, `cni:pkg/types/internal/convert.go`), not computed by the code under test:

* 0.1.0/0.2.0 hold `ip4`/`ip6`: the first IP of each family, its routes folded in
  (dst and gw only), no interfaces;
* 0.3.0/0.3.1/0.4.0 hold `interfaces`/`ips`/`routes` with `ips[].version`;
* 1.0.0 drops `version`; 1.1.0 adds interface mtu/socketPath/pciID and route
  mtu/advmss/priority/table/scope.

A conversion a -> b keeps what *both* a and b can express, so the expected output of
a -> b (and of the round trip a -> b -> a) is the content level min(level(a), level(b))
written in b's (or a's) layout.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from cni_bridge.config.model import build_netconf
from cni_bridge.errors import INVALID_CONFIG, RESULT_CONVERSION, CniError
from cni_bridge.result import DNS, Interface, IPConfig, Result, Route, parse_result, render_result

pytestmark = pytest.mark.unit

VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LEGACY = ("0.1.0", "0.2.0")
WITH_IP_VERSION = ("0.3.0", "0.3.1", "0.4.0")
PAIRS = [(a, b) for a in VERSIONS for b in VERSIONS]

# Content levels: what a version can express.
L_LEGACY, L_CURRENT, L_FULL = 0, 1, 2


def level(version: str) -> int:
    if version in LEGACY:
        return L_LEGACY
    return L_FULL if version == "1.1.0" else L_CURRENT


# ----------------------------------------------------------------- the dual-stack result

INTERFACES_FULL: list[dict[str, Any]] = [
    {"name": "cni0", "mac": "0a:58:0a:01:00:01"},
    {"name": "veth1a2b3c4d", "mac": "0a:58:0a:01:00:02", "mtu": 1400},
    {"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1400, "sandbox": "/var/run/netns/blue",
     "socketPath": "/run/vhost-user/eth0.sock", "pciID": "0000:04:00.5"},
]
# Families interleaved on purpose: "first IP per family" is not "first two IPs".
IPS: list[tuple[str, str]] = [
    ("10.1.0.5/16", "10.1.0.1"),
    ("fd00:1::5/64", "fd00:1::1"),
    ("10.1.0.6/16", ""),
    ("fd00:1::6/64", ""),
]
# Interleaved too: the legacy layout folds them per family, v4 first.
ROUTES_FULL: list[dict[str, Any]] = [
    {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 100, "table": 254, "scope": 0},
    {"dst": "::/0", "gw": "fd00:1::1", "priority": 1024},
    {"dst": "192.168.0.0/24"},
    {"dst": "fd01::/64", "table": 100, "scope": 253},
]
DNS_DOC: dict[str, Any] = {
    "nameservers": ["10.1.0.1", "fd00:1::1"],
    "domain": "cluster.local",
    "search": ["svc.cluster.local", "cluster.local"],
    "options": ["ndots:5"],
}
FIELDS_1_1_INTERFACE = ("mtu", "socketPath", "pciID")
FIELDS_1_1_ROUTE = ("mtu", "advmss", "priority", "table", "scope")


def _only(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k in keys}


def expected(content: int, version: str) -> dict[str, Any]:
    """The dual-stack result at content level `content`, in `version`'s layout."""
    assert content <= level(version)
    out: dict[str, Any] = {"cniVersion": version}
    if version in LEGACY:
        out["ip4"] = {"ip": "10.1.0.5/16", "gateway": "10.1.0.1",
                      "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "192.168.0.0/24"}]}
        out["ip6"] = {"ip": "fd00:1::5/64", "gateway": "fd00:1::1",
                      "routes": [{"dst": "::/0", "gw": "fd00:1::1"}, {"dst": "fd01::/64"}]}
        out["dns"] = copy.deepcopy(DNS_DOC)
        return out
    if content == L_LEGACY:
        ips: list[dict[str, Any]] = [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                                     {"address": "fd00:1::5/64", "gateway": "fd00:1::1"}]
        routes = [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "192.168.0.0/24"},
                  {"dst": "::/0", "gw": "fd00:1::1"}, {"dst": "fd01::/64"}]
    else:
        if content == L_FULL:
            out["interfaces"] = copy.deepcopy(INTERFACES_FULL)
            routes = copy.deepcopy(ROUTES_FULL)
        else:
            out["interfaces"] = [_only(i, ("name", "mac", "sandbox")) for i in INTERFACES_FULL]
            routes = [_only(r, ("dst", "gw")) for r in ROUTES_FULL]
        ips = []
        for address, gateway in IPS:
            entry: dict[str, Any] = {"interface": 2, "address": address}
            if gateway:
                entry["gateway"] = gateway
            ips.append(entry)
    if version in WITH_IP_VERSION:
        ips = [{"version": "6" if ":" in e["address"] else "4", **e} for e in ips]
    out["ips"] = ips
    out["routes"] = routes
    out["dns"] = copy.deepcopy(DNS_DOC)
    return out


def source(version: str) -> dict[str, Any]:
    """The richest result `version` can express, as a plugin speaking it prints it."""
    return expected(level(version), version)


def convert(doc: dict[str, Any], from_version: str, to_version: str) -> dict[str, Any]:
    return render_result(parse_result(copy.deepcopy(doc), from_version), to_version)


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


# ----------------------------------------------------------------- conversions

@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[pair_id(p) for p in PAIRS])
def test_convert_every_pair(src: str, dst: str) -> None:
    out = convert(source(src), src, dst)
    assert out == expected(min(level(src), level(dst)), dst)
    json.dumps(out)  # what the plugin prints must be JSON


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[pair_id(p) for p in PAIRS])
def test_round_trip_keeps_what_both_versions_express(src: str, dst: str) -> None:
    there = convert(source(src), src, dst)
    back = convert(there, dst, src)
    assert back == expected(min(level(src), level(dst)), src)
    # A second round trip loses nothing more.
    assert convert(convert(back, src, dst), dst, src) == back


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[pair_id(p) for p in PAIRS])
def test_spec_rules_per_pair(src: str, dst: str) -> None:
    """The individual rules, asserted one by one so a failure names the rule it breaks."""
    out = convert(source(src), src, dst)
    assert out["cniVersion"] == dst
    if dst in LEGACY:
        assert set(out) == {"cniVersion", "ip4", "ip6", "dns"}, "0.1/0.2: ip4/ip6/dns only, interfaces dropped"
        assert out["ip4"]["ip"] == "10.1.0.5/16", "only the first IPv4 address"
        assert out["ip6"]["ip"] == "fd00:1::5/64", "only the first IPv6 address"
        for key, fam_v6 in (("ip4", False), ("ip6", True)):
            for route in out[key]["routes"]:
                assert (":" in route["dst"]) == fam_v6, f"{key} holds only its family's routes"
                assert set(route) <= {"dst", "gw"}, "legacy routes carry dst and gw only"
        return
    assert list(out) == [k for k in ("cniVersion", "interfaces", "ips", "routes", "dns") if k in out]
    assert ("interfaces" in out) == (src not in LEGACY), "a legacy result has no interfaces to convert"
    for ip in out["ips"]:
        assert ("version" in ip) == (dst in WITH_IP_VERSION), "ips[].version only in 0.3.x/0.4.0"
        if "version" in ip:
            assert ip["version"] == ("6" if ":" in ip["address"] else "4")
        assert list(ip) == [k for k in ("version", "interface", "address", "gateway") if k in ip]
    with_1_1 = dst == "1.1.0" and src == "1.1.0"
    for iface in out.get("interfaces", []):
        for key in FIELDS_1_1_INTERFACE:
            assert (key in iface) == (with_1_1 and key in _interface_by_name(iface["name"]))
    for route in out["routes"]:
        original = next(r for r in ROUTES_FULL if r["dst"] == route["dst"])
        for key in FIELDS_1_1_ROUTE:
            assert (key in route) == (with_1_1 and key in original)
    if src in LEGACY:
        fams = [":" in r["dst"] for r in out["routes"]]
        assert fams == sorted(fams), "legacy routes unfold v4 first, then v6"


def _interface_by_name(name: str) -> dict[str, Any]:
    return next(i for i in INTERFACES_FULL if i["name"] == name)


@pytest.mark.parametrize("version", VERSIONS)
def test_1_1_fields_from_model_only_rendered_in_1_1(version: str) -> None:
    result = Result(
        interfaces=[Interface(name="eth0", mac="0a:58:0a:01:00:05", mtu=9000, sandbox="/var/run/netns/x",
                              socket_path="/run/s.sock", pci_id="0000:00:01.0")],
        ips=[IPConfig(address="10.0.0.5/24", gateway="10.0.0.1", interface=0)],
        routes=[Route(dst="0.0.0.0/0", gw="10.0.0.1", mtu=1500, advmss=1460, priority=10, table=0, scope=0)],
    )
    out = render_result(result, version)
    text = json.dumps(out)
    for key in ("socketPath", "pciID", "advmss", "priority", "table", "scope", '"mtu"'):
        assert (key in text) == (version == "1.1.0"), key
    if version == "1.1.0":
        # table 0 and scope 0 are values, not absence.
        assert out["routes"][0]["table"] == 0 and out["routes"][0]["scope"] == 0


@pytest.mark.parametrize("version", VERSIONS)
def test_dns_rendered_when_set_and_empty_otherwise(version: str) -> None:
    bare = render_result(Result(ips=[IPConfig(address="10.0.0.5/24")]), version)
    assert bare.get("dns", {}) == {}, "an empty DNS is omitted or printed as {}"
    with_dns = render_result(Result(ips=[IPConfig(address="10.0.0.5/24")], dns=DNS(nameservers=["10.0.0.1"])), version)
    assert with_dns["dns"] == {"nameservers": ["10.0.0.1"]}


# ----------------------------------------------------------------- L2-only and single-family

def l2_only(version: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"cniVersion": version,
                           "interfaces": [{"name": "cni0", "mac": "0a:58:0a:01:00:01"},
                                          {"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/var/run/netns/x"}],
                           "ips": []}
    return doc


CURRENT = [v for v in VERSIONS if v not in LEGACY]


@pytest.mark.parametrize("dst", LEGACY)
@pytest.mark.parametrize("src", CURRENT)
def test_l2_only_result_cannot_become_legacy(src: str, dst: str) -> None:
    result = parse_result(l2_only(src), src)
    with pytest.raises(CniError) as info:
        render_result(result, dst)
    assert info.value.code == RESULT_CONVERSION == 113
    assert dst in info.value.msg


@pytest.mark.parametrize("dst", CURRENT)
@pytest.mark.parametrize("src", CURRENT)
def test_l2_only_result_converts_between_current_versions(src: str, dst: str) -> None:
    out = convert(l2_only(src), src, dst)
    assert [i["name"] for i in out["interfaces"]] == ["cni0", "eth0"]
    assert not out.get("ips")
    assert "routes" not in out


@pytest.mark.parametrize("dst", LEGACY)
def test_single_family_to_legacy_drops_other_family_routes(dst: str) -> None:
    doc = {"cniVersion": "1.0.0",
           "ips": [{"address": "fd00::5/64", "gateway": "fd00::1"}],
           "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]}
    out = convert(doc, "1.0.0", dst)
    assert "ip4" not in out
    assert out["ip6"] == {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]}


@pytest.mark.parametrize("src", LEGACY)
def test_legacy_ip4_only_to_current(src: str) -> None:
    doc = {"cniVersion": src, "ip4": {"ip": "10.0.0.5/24", "routes": [{"dst": "0.0.0.0/0"}]}}
    for dst in CURRENT:
        out = convert(doc, src, dst)
        expected_ip: dict[str, Any] = {"address": "10.0.0.5/24"}
        if dst in WITH_IP_VERSION:
            expected_ip = {"version": "4", **expected_ip}
        assert out["ips"] == [expected_ip]
        assert out["routes"] == [{"dst": "0.0.0.0/0"}]
        assert "interfaces" not in out


def test_addresses_are_canonicalised_when_parsed() -> None:
    doc = {"cniVersion": "1.0.0", "ips": [{"address": "FD00:0:0::5/64", "gateway": "fd00:0::1"}],
           "routes": [{"dst": "fd00:0::/64"}]}
    out = convert(doc, "1.0.0", "1.0.0")
    assert out["ips"][0] == {"address": "fd00::5/64", "gateway": "fd00::1"}
    assert out["routes"][0]["dst"] == "fd00::/64"


# ----------------------------------------------------------------- prevResult parsing errors

GOOD_IFACES = [{"name": "cni0"}, {"name": "veth0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}]

PREV_ERRORS: list[tuple[str, str, Any, str]] = [
    # (id, version, prevResult, JSON path the message must start with)
    ("not-object-list", "1.0.0", [], "prevResult"),
    ("not-object-string", "1.0.0", "10.0.0.5/24", "prevResult"),
    ("not-object-number", "0.4.0", 5, "prevResult"),
    ("not-object-null", "0.2.0", None, "prevResult"),
    ("bad-cidr-octet", "1.0.0", {"ips": [{"address": "10.1.0.500/16"}]}, "prevResult.ips[0].address"),
    ("bad-cidr-prefix", "1.1.0", {"ips": [{"address": "10.1.0.5/33"}]}, "prevResult.ips[0].address"),
    ("cidr-without-prefix", "1.0.0", {"ips": [{"address": "10.1.0.5"}]}, "prevResult.ips[0].address"),
    ("address-not-string", "1.0.0", {"ips": [{"address": 167837701}]}, "prevResult.ips[0].address"),
    ("address-missing", "1.0.0", {"ips": [{"gateway": "10.0.0.1"}]}, "prevResult.ips[0].address"),
    ("second-ip-bad", "1.0.0", {"ips": [{"address": "10.0.0.5/24"}, {"address": "fd00::zz/64"}]},
     "prevResult.ips[1].address"),
    ("version-4-for-ipv6", "0.4.0", {"ips": [{"version": "4", "address": "fd00::5/64"}]}, "prevResult.ips[0].version"),
    ("version-6-for-ipv4", "0.3.1", {"ips": [{"version": "6", "address": "10.0.0.5/24"}]},
     "prevResult.ips[0].version"),
    ("version-5", "0.3.0", {"ips": [{"version": "5", "address": "10.0.0.5/24"}]}, "prevResult.ips[0].version"),
    ("version-int", "0.3.1", {"ips": [{"version": 4, "address": "10.0.0.5/24"}]}, "prevResult.ips[0].version"),
    ("interface-out-of-range", "1.0.0",
     {"interfaces": GOOD_IFACES, "ips": [{"address": "10.0.0.5/24", "interface": 3}]}, "prevResult.ips[0].interface"),
    ("interface-without-interfaces", "1.0.0", {"ips": [{"address": "10.0.0.5/24", "interface": 0}]},
     "prevResult.ips[0].interface"),
    ("interface-negative", "0.4.0",
     {"interfaces": GOOD_IFACES, "ips": [{"version": "4", "address": "10.0.0.5/24", "interface": -1}]},
     "prevResult.ips[0].interface"),
    ("interface-string", "1.0.0", {"interfaces": GOOD_IFACES, "ips": [{"address": "10.0.0.5/24", "interface": "2"}]},
     "prevResult.ips[0].interface"),
    ("interface-bool", "1.0.0", {"interfaces": GOOD_IFACES, "ips": [{"address": "10.0.0.5/24", "interface": True}]},
     "prevResult.ips[0].interface"),
    ("gateway-other-family", "1.0.0", {"ips": [{"address": "10.0.0.5/24", "gateway": "fd00::1"}]},
     "prevResult.ips[0].gateway"),
    ("gateway-invalid", "1.0.0", {"ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.256"}]},
     "prevResult.ips[0].gateway"),
    ("ips-not-list", "1.0.0", {"ips": {"address": "10.0.0.5/24"}}, "prevResult.ips"),
    ("ip-not-object", "1.0.0", {"ips": ["10.0.0.5/24"]}, "prevResult.ips[0]"),
    ("interfaces-not-list", "1.0.0", {"interfaces": "eth0"}, "prevResult.interfaces"),
    ("interface-name-missing", "1.0.0", {"interfaces": [{"name": "cni0"}, {"mac": "0a:58:0a:01:00:05"}]},
     "prevResult.interfaces[1].name"),
    ("interface-mac-not-string", "1.0.0", {"interfaces": [{"name": "eth0", "mac": 5}]}, "prevResult.interfaces[0].mac"),
    ("interface-mtu-not-int", "1.1.0", {"interfaces": [{"name": "eth0", "mtu": "1500"}]},
     "prevResult.interfaces[0].mtu"),
    ("route-bad-dst", "1.0.0", {"routes": [{"dst": "10.0.0.0/33"}]}, "prevResult.routes[0].dst"),
    ("route-missing-dst", "1.0.0", {"routes": [{"gw": "10.0.0.1"}]}, "prevResult.routes[0].dst"),
    ("route-bad-gw", "1.0.0", {"routes": [{"dst": "0.0.0.0/0"}, {"dst": "0.0.0.0/0", "gw": "gateway"}]},
     "prevResult.routes[1].gw"),
    ("route-table-not-int", "1.1.0", {"routes": [{"dst": "0.0.0.0/0", "table": "main"}]},
     "prevResult.routes[0].table"),
    ("dns-not-object", "1.0.0", {"dns": ["10.0.0.1"]}, "prevResult.dns"),
    ("dns-nameservers-not-list", "1.0.0", {"dns": {"nameservers": "10.0.0.1"}}, "prevResult.dns.nameservers"),
    ("legacy-ip4-holds-ipv6", "0.2.0", {"ip4": {"ip": "fd00::5/64"}}, "prevResult.ip4.ip"),
    ("legacy-ip6-holds-ipv4", "0.2.0", {"ip6": {"ip": "10.0.0.5/24"}}, "prevResult.ip6.ip"),
    ("legacy-bad-cidr", "0.1.0", {"ip4": {"ip": "10.0.0.5/33"}}, "prevResult.ip4.ip"),
    ("legacy-ip4-not-object", "0.2.0", {"ip4": "10.0.0.5/24"}, "prevResult.ip4"),
    ("legacy-route-bad-dst", "0.2.0", {"ip4": {"ip": "10.0.0.5/24", "routes": [{"dst": "default"}]}},
     "prevResult.ip4.routes[0].dst"),
    ("legacy-gateway-other-family", "0.2.0", {"ip4": {"ip": "10.0.0.5/24", "gateway": "fd00::1"}},
     "prevResult.ip4.gateway"),
]


@pytest.mark.parametrize(("version", "prev", "path"), [c[1:] for c in PREV_ERRORS], ids=[c[0] for c in PREV_ERRORS])
def test_prev_result_errors_name_the_json_path(version: str, prev: Any, path: str) -> None:
    with pytest.raises(CniError) as info:
        parse_result(prev, version, "prevResult")
    assert info.value.code == INVALID_CONFIG == 7
    assert info.value.msg.startswith(path + ":"), info.value.msg


def _conf(version: str, prev: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "net1", "type": "cni-bridge", "prevResult": prev}


@pytest.mark.parametrize(("version", "prev", "path"),
                         [c[1:] for c in PREV_ERRORS if isinstance(c[2], dict)],
                         ids=[c[0] for c in PREV_ERRORS if isinstance(c[2], dict)])
def test_prev_result_errors_through_build_netconf(version: str, prev: dict[str, Any], path: str) -> None:
    """The real path: the config's prevResult, without its own cniVersion, is read as the config's version."""
    with pytest.raises(CniError) as info:
        build_netconf(_conf(version, prev), version)
    assert info.value.code == INVALID_CONFIG
    assert info.value.msg.startswith(path + ":"), info.value.msg


def test_prev_result_unsupported_cni_version() -> None:
    with pytest.raises(CniError) as info:
        build_netconf(_conf("1.0.0", {"cniVersion": "9.9.9", "ips": []}), "1.0.0")
    assert info.value.code == INVALID_CONFIG
    assert "prevResult.cniVersion" in info.value.msg and "9.9.9" in info.value.msg


def test_prev_result_own_version_wins_over_config_version() -> None:
    prev = {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.5/24", "gateway": "10.0.0.1"}}
    conf = build_netconf(_conf("1.0.0", prev), "1.0.0")
    assert conf.prev_result is not None
    assert [ip.address for ip in conf.prev_result.ips] == ["10.0.0.5/24"]
    # Same document read as the config's version would miss the legacy layout entirely.
    conf = build_netconf(_conf("0.2.0", {k: v for k, v in prev.items() if k != "cniVersion"}), "0.2.0")
    assert conf.prev_result is not None and conf.prev_result.ips[0].gateway == "10.0.0.1"


def test_prev_result_parsed_model() -> None:
    result = parse_result(source("1.1.0"), "1.1.0", "prevResult")
    assert [i.name for i in result.interfaces] == ["cni0", "veth1a2b3c4d", "eth0"]
    assert result.interfaces[2].socket_path == "/run/vhost-user/eth0.sock"
    assert [(ip.address, ip.family, ip.interface) for ip in result.ips] == [
        ("10.1.0.5/16", 4, 2), ("fd00:1::5/64", 6, 2), ("10.1.0.6/16", 4, 2), ("fd00:1::6/64", 6, 2)]
    assert result.routes[0] == Route(dst="0.0.0.0/0", gw="10.1.0.1", mtu=1400, advmss=1360, priority=100,
                                     table=254, scope=0)
    assert result.dns == DNS(nameservers=["10.1.0.1", "fd00:1::1"], domain="cluster.local",
                             search=["svc.cluster.local", "cluster.local"], options=["ndots:5"])
