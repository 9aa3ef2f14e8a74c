"""The nftables backend's scheme and its JSON: pure functions, pinned items and commands.

The integration tests (test_firewall_drivers.py, test_firewall_nftables.py, the traffic
tests) prove that nft takes these commands and lists them back as these items; here we pin
the scheme itself, and read back a listing nft 1.0.6 printed for the attachment below.
"""

from __future__ import annotations

from typing import Any

import pytest

from cni_bridge.errors import INVALID_CONFIG, CniError
from cni_bridge.firewall.model import AttachmentRules
from cni_bridge.firewall.model import parse_attachment_comment
from cni_bridge.firewall.nftables import scheme, syntax
from cni_bridge.firewall.portmap import PortMapping

pytestmark = pytest.mark.unit

C = "cni-bridge net=n1 id=c1 if=eth0"
TCP = PortMapping(8080, 80, "tcp")
UDP_ON_HOST_IP = PortMapping(5353, 53, "udp", "198.51.100.1")


def rules(**overrides: Any) -> AttachmentRules:
    base: dict[str, Any] = dict(
        network="n1", bridge="cnibr0", container_id="c1", ifname="eth0",
        ips=(("10.1.0.2", 24), ("fd00::2", 64)), ip_masq=True, port_mappings=(TCP, UDP_ON_HOST_IP))
    base.update(overrides)
    return AttachmentRules(**base)


def plan(**overrides: Any) -> scheme.Plan:
    built = scheme.build(rules(**overrides))
    assert built is not None
    return built


def elements(p: scheme.Plan, set_name: str) -> list[tuple[str, str]]:
    return [(item[2], item[3]) for item in p.items if item[0] == "element" and item[1] == set_name]


MASQ = "masq-358a50354525812f"        # sha256("masq\0<v4 networks>\0<v6 networks>")[:16]
HAIRPIN = "hairpin-4c325d71133bb2ec"

GOLDEN_ITEMS = (
    ("element", "dnat4any_addr", "tcp . 8080", "10.1.0.2", C),
    ("element", "dnat4any_port", "tcp . 8080", "80", C),
    ("element", "dnat4_addr", "198.51.100.1 . udp . 5353", "10.1.0.2", C),
    ("element", "dnat4_port", "198.51.100.1 . udp . 5353", "53", C),
    ("element", "dnat6any_addr", "tcp . 8080", "fd00::2", C),
    ("element", "dnat6any_port", "tcp . 8080", "80", C),
    ("element", "masq4", "cnibr0 . 10.1.0.2", f"jump {MASQ}", C),
    ("element", "masq6", "cnibr0 . fd00::2", f"jump {MASQ}", C),
    ("element", "hairpin4", "cnibr0 . 10.1.0.2", f"jump {HAIRPIN}", C),
    ("element", "hairpin6", "cnibr0 . fd00::2", f"jump {HAIRPIN}", C),
)


def shared_of(p: scheme.Plan) -> dict[str, tuple[Any, ...]]:
    return dict(p.shared)


def networks(p: scheme.Plan, kind: str) -> tuple[str, str]:
    """(v4, v6) networks of the plan's masq or hairpin chain."""
    item = next(items[0] for key, items in p.shared if key.startswith(f"{kind}:"))
    return item[2], item[3]


def test_an_attachment_is_elements_and_the_shared_resources_it_uses() -> None:
    p = plan()
    assert p.items == GOLDEN_ITEMS
    assert [key for key, _ in p.shared] == ["table", "forward", "hostport", "postrouting", "masq:358a50354525812f",
                                            "hairpin:4c325d71133bb2ec", "localhost-guard", "bridge:cnibr0"]
    assert shared_of(p)["masq:358a50354525812f"] == (
        ("masq-chain", MASQ, "10.1.0.0/24,224.0.0.0/4", "fd00::/64,ff00::/8"),)
    assert shared_of(p)["hairpin:4c325d71133bb2ec"] == (("hairpin-chain", HAIRPIN, "10.1.0.0/24,127.0.0.1", "fd00::/64"),)
    assert all(items == scheme.shared(key) for key, items in p.shared if not key.startswith(("masq:", "hairpin:")))


def test_attachments_of_one_network_share_its_chains_and_another_configuration_gets_its_own() -> None:
    assert shared_of(plan(container_id="c2", ips=(("10.1.0.3", 24), ("fd00::3", 64)))).keys() == shared_of(plan()).keys()
    changed = plan(masq_exclude=("198.51.100.0/24",))
    assert networks(changed, "masq") == ("10.1.0.0/24,198.51.100.0/24,224.0.0.0/4", "fd00::/64,ff00::/8")
    assert f"jump {MASQ}" not in [item[3] for item in changed.items]


def test_shared_resources_are_fixed_by_their_key() -> None:
    assert scheme.shared("table") == (("table",),)
    assert scheme.shared("localhost-guard") == (("chain", "raw-prerouting"),)
    assert scheme.shared("hostport")[-3:] == (("chain", "hostports"), ("chain", "nat-prerouting"), ("chain", "nat-output"))
    assert scheme.shared("bridge:br0") == (
        ("element", "bridges", "br0", "", "cni-bridge shared=bridge:br0"),
        ("element", "bridge_pairs", "br0 . br0", "", "cni-bridge shared=bridge:br0"),
        ("accept", "bridge", "br0"))
    assert scheme.shared("internal:br1")[-1] == ("accept", "internal", "br1")
    assert scheme.shared("isolate:br2") == (("element", "isolated", "br2", "", "cni-bridge shared=isolate:br2"),)
    # A network chain's key names it but not its networks: enough to delete it.
    assert scheme.shared("masq:0123") == (("masq-chain", "masq-0123", "", ""),)
    for key in ("table", "forward", "hostport", "postrouting", "localhost-guard"):
        for item in scheme.shared(key):
            assert item[0] != "set" or item[1] in scheme.SETS
            assert item[0] != "chain" or item[1] in scheme.CHAINS
    with pytest.raises(ValueError):
        scheme.shared("masq-mark:13")


def test_every_set_of_the_scheme_belongs_to_one_shared_resource_and_none_is_an_interval_set() -> None:
    owned = [item[1] for key in ("forward", "hostport", "postrouting") for item in scheme.shared(key) if item[0] == "set"]
    assert sorted(owned) == sorted(scheme.SETS)
    commands = syntax.render_add([("set", name) for name in scheme.SETS], ())
    assert all("flags" not in body for c in commands for body in c["add"].values())


def test_base_chains_and_their_priorities() -> None:
    hooks = {name: (c.type, c.hook, c.priority) for name, c in scheme.CHAINS.items() if c.hook}
    assert hooks == {
        "raw-prerouting": ("filter", "prerouting", -300),  # before conntrack, as iptables' raw table
        "nat-prerouting": ("nat", "prerouting", -100),
        "nat-output": ("nat", "output", -100),
        "nat-postrouting": ("nat", "postrouting", 100),
        "filter-forward": ("filter", "forward", 0),
    }


def test_masquerade_exclusions_are_collapsed_into_disjoint_networks() -> None:
    p = plan(masq_exclude=("10.0.0.0/8", "10.9.0.0/16", "198.51.100.0/25", "198.51.100.128/25"), port_mappings=())
    assert networks(p, "masq")[0] == "10.0.0.0/8,198.51.100.0/24,224.0.0.0/4"


def test_the_network_subnets_replace_the_own_subnet_in_the_exclusions() -> None:
    p = plan(subnets=("10.1.0.0/16", "fd00::/48"), port_mappings=())
    assert networks(p, "masq") == ("10.1.0.0/16,224.0.0.0/4", "fd00::/48,ff00::/8")


def test_without_snat_nothing_is_hairpinned_and_without_ipmasq_nothing_masqueraded() -> None:
    p = plan(snat=False, ip_masq=False)
    assert not any(item[1].startswith(("hairpin", "masq")) for item in p.items)
    assert "postrouting" not in shared_of(p) and "hostport" in shared_of(p)


def test_masq_all_hairpins_every_source() -> None:
    assert networks(plan(masq_all=True), "hairpin") == ("0.0.0.0/0", "::/0")


def test_a_host_ip_publishes_in_its_own_family_only() -> None:
    p = plan(port_mappings=(PortMapping(8443, 443, "tcp", "2001:db8::1"), PortMapping(9000, 90, "sctp", "0.0.0.0")))
    assert elements(p, "dnat6_addr") == [("2001:db8::1 . tcp . 8443", "fd00::2")]
    assert elements(p, "dnat4any_port") == [("sctp . 9000", "90")]
    assert elements(p, "dnat4_addr") == elements(p, "dnat6any_addr") == []


def test_an_overlapping_later_mapping_is_left_out_and_duplicates_are_one() -> None:
    p = plan(port_mappings=(TCP, PortMapping(8080, 81, "tcp", "198.51.100.1"), TCP, PortMapping(8080, 82, "udp")))
    assert elements(p, "dnat4any_port") == [("tcp . 8080", "80"), ("udp . 8080", "82")]
    assert elements(p, "dnat4_port") == []


def test_internal_and_isolated_networks() -> None:
    internal = plan(internal=True, ip_masq=False, port_mappings=(), ips=(("10.2.0.2", 24),))
    assert internal.items == ()
    assert list(shared_of(internal)) == ["table", "forward", "internal:cnibr0"]
    isolated = plan(isolate=True, port_mappings=())
    assert [k for k in shared_of(isolated) if not k.startswith("masq:")] == [
        "table", "forward", "postrouting", "bridge:cnibr0", "isolate:cnibr0"]
    with pytest.raises(CniError) as exc:
        scheme.build(rules(internal=True))
    assert exc.value.code == INVALID_CONFIG


def test_an_attachment_without_addresses_needs_nothing() -> None:
    assert scheme.build(rules(ips=(), port_mappings=())) is None


# --- comments ------------------------------------------------------------------------------


def test_comments_name_the_attachment_and_read_back() -> None:
    assert scheme.attachment_comment("n1", "c1", "eth0") == C
    assert parse_attachment_comment(C) == ("n1", "c1", "eth0")
    assert parse_attachment_comment("cni-bridge shared=bridge:br0") is None


@pytest.mark.parametrize(("network", "container_id", "ifname"), [
    ("n" * 60, "c" * 64, "eth0"),     # longer than nft's 128-byte comments
    ("n1", 'a"b\\c', "eth0"),          # characters `nft list` cannot quote
    ("n1", "é" * 60, "eth0"),          # 128 bytes cut on a character boundary
])
def test_a_comment_that_cannot_be_plain_is_keyed_by_the_attachment_hash(network: str, container_id: str,
                                                                      ifname: str) -> None:
    comment = scheme.attachment_comment(network, container_id, ifname)
    assert len(comment.encode()) <= scheme.COMMENT_MAX
    assert comment.startswith("cni-bridge key=") and '"' not in comment and "\\" not in comment
    assert parse_attachment_comment(comment) is None
    assert comment != scheme.attachment_comment(network, container_id + "x", ifname)


# --- JSON ----------------------------------------------------------------------------------


def created(p: scheme.Plan) -> list[Any]:
    return [item for _, items in p.shared for item in items]


def test_the_first_attachment_creates_everything_in_one_transaction() -> None:
    p = plan()
    commands = syntax.render_add(created(p), p.items)
    verbs = [(verb, kind) for command in commands for verb, body in command.items() for kind in body]
    assert verbs[0] == ("add", "table")
    first_chain, first_rule = verbs.index(("add", "chain")), verbs.index(("add", "rule"))
    assert set(verbs[1:first_chain]) == {("add", "set"), ("add", "map")}
    assert first_chain < first_rule < verbs.index(("add", "element")) < verbs.index(("create", "element"))
    assert {"flush": {"chain": {"family": "inet", "table": "cni-bridge", "name": "filter-forward"}}} in commands
    # Elements of shared resources are added (repeatable), the attachment's created (exclusive).
    dnat = next(c for c in commands if "create" in c and c["create"]["element"]["name"] == "dnat4_port")
    assert dnat["create"]["element"]["elem"] == [[{"elem": {"val": {"concat": ["198.51.100.1", "udp", 5353]},
                                                            "comment": C}}, 53]]
    masq = next(c for c in commands if "create" in c and c["create"]["element"]["name"] == "masq4")
    assert masq["create"]["element"]["elem"] == [[{"elem": {"val": {"concat": ["cnibr0", "10.1.0.2"]}, "comment": C}},
                                                  {"jump": {"target": MASQ}}]]


def test_rules_of_the_scheme_as_json() -> None:
    commands = syntax.render_add([("chain", "nat-postrouting")], ())
    rules_json = [c["add"]["rule"] for c in commands if "rule" in c.get("add", {})]
    assert rules_json[0] == {
        "family": "inet", "table": "cni-bridge", "chain": "nat-postrouting", "comment": "cni-bridge shared=postrouting",
        "expr": [
            {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"vmap": {"key": {"concat": [{"meta": {"key": "oifname"}}, {"payload": {"protocol": "ip", "field": "daddr"}}]},
                      "data": "@hairpin4"}}]}
    commands = syntax.render_add([("masq-chain", MASQ, "10.1.0.0/24,224.0.0.0/4", "")], ())
    assert [c["add"]["rule"]["expr"] for c in commands if "rule" in c.get("add", {})] == [
        [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                    "right": {"set": [{"prefix": {"addr": "10.1.0.0", "len": 24}},
                                      {"prefix": {"addr": "224.0.0.0", "len": 4}}]}}}, {"return": None}],
        [{"masquerade": None}]]
    assert commands[0] == {"add": {"chain": {"family": "inet", "table": "cni-bridge", "name": MASQ}}}


def test_deleting_names_keys_only_and_the_last_user_deletes_the_table() -> None:
    own = [("element", "masq4", "cnibr0 . 10.1.0.2", f"jump {MASQ}", C),
           ("element", "dnat4any_port", "tcp . 8080", "80", C)]
    commands = syntax.render_delete([], own)
    assert commands == [
        {"delete": {"element": {"family": "inet", "table": "cni-bridge", "name": "masq4",
                                "elem": [{"concat": ["cnibr0", "10.1.0.2"]}]}}},
        {"delete": {"element": {"family": "inet", "table": "cni-bridge", "name": "dnat4any_port",
                                "elem": [{"concat": ["tcp", 8080]}]}}}]
    assert syntax.render_delete([("table",), ("chain", "hostports")], own) == [
        {"delete": {"table": {"family": "inet", "name": "cni-bridge"}}}]
    shared = [*scheme.shared("hostport"), *scheme.shared("isolate:br2"), ("masq-chain", MASQ, "10.1.0.0/24", "")]
    kinds = [next(iter(c["delete"])) for c in syntax.render_delete(shared, own)]
    assert kinds == ["element", "element", "element", "chain", "chain", "chain", "chain", *["map"] * 8]
    chains = [c["delete"]["chain"]["name"] for c in syntax.render_delete(shared, ()) if "chain" in c["delete"]]
    assert chains == [MASQ, "nat-output", "nat-prerouting", "hostports"]  # those that jump first


# Part of what nft 1.0.6 listed (`nft -j list table inet cni-bridge`) after installing plan().
LISTING: list[Any] = [
    {"table": {"family": "inet", "name": "cni-bridge", "handle": 1}},
    {"set": {"family": "inet", "name": "bridges", "table": "cni-bridge", "type": "ifname", "handle": 1,
             "elem": [{"elem": {"val": "cnibr0", "comment": "cni-bridge shared=bridge:cnibr0"}}]}},
    {"map": {"family": "inet", "name": "dnat4_port", "table": "cni-bridge", "type": ["ipv4_addr", "inet_proto",
             "inet_service"], "handle": 7, "map": "inet_service", "elem": [
        [{"elem": {"val": {"concat": ["198.51.100.1", "udp", 5353]}, "comment": C}}, 53]]}},
    {"map": {"family": "inet", "name": "dnat4any_port", "table": "cni-bridge", "type": ["inet_proto", "inet_service"],
             "handle": 8, "map": "inet_service", "elem": [
        [{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": C}}, 80]]}},
    {"map": {"family": "inet", "name": "masq4", "table": "cni-bridge", "type": ["ifname", "ipv4_addr"], "handle": 14,
             "map": "verdict", "elem": [
        [{"elem": {"val": {"concat": ["cnibr0", "10.1.0.2"]}, "comment": C}}, {"jump": {"target": MASQ}}]]}},
    {"map": {"family": "inet", "name": "masq6", "table": "cni-bridge", "type": ["ifname", "ipv6_addr"], "handle": 15,
             "map": "verdict"}},
    {"chain": {"family": "inet", "table": "cni-bridge", "name": "nat-prerouting", "handle": 18, "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "cni-bridge", "chain": "nat-prerouting", "handle": 32,
              "comment": "cni-bridge shared=hostport", "expr": [
                  {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                  {"goto": {"target": "hostports"}}]}},
    {"chain": {"family": "inet", "table": "cni-bridge", "name": "nat-output", "handle": 19, "type": "nat",
               "hook": "output", "prio": -100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "cni-bridge", "name": MASQ, "handle": 20}},
    *({"rule": {"family": "inet", "table": "cni-bridge", "chain": MASQ, "handle": h,
                "comment": "cni-bridge shared=masq:358a50354525812f", "expr": []}} for h in (40, 41, 42)),
]


def test_a_listing_reads_back_as_the_items_written() -> None:
    listed = syntax.parse_listing(LISTING)
    present = [item for item in plan().items if listed.has(item)]
    assert present == [item for item in GOLDEN_ITEMS if item[1] in ("dnat4_port", "dnat4any_port", "masq4")]
    assert listed.has(("table",)) and listed.has(("set", "masq6")) and not listed.has(("set", "hairpin4"))
    assert listed.has(("chain", "nat-prerouting"))
    assert not listed.has(("chain", "nat-output")), "a chain without its rules is not the chain"
    assert listed.has(shared_of(plan())["masq:358a50354525812f"][0])
    assert not listed.has(("masq-chain", MASQ, "10.1.0.0/24", "")), "two rules, not three"
    assert not listed.has(("element", "dnat4any_port", "tcp . 8080", "81", C)), "other data"
    assert not syntax.EMPTY.has(("table",))


def test_the_fallback_removes_what_the_listing_shows_of_the_owners_and_the_shared_resources() -> None:
    listed = syntax.parse_listing(LISTING)
    commands = syntax.render_purge(listed, [C], [*scheme.shared("hostport"), *scheme.shared("bridge:cnibr0"),
                                                 *scheme.shared("masq:358a50354525812f")])
    named = [(verb, kind, body.get("name"), len(body.get("elem", [])))
             for c in commands for verb, inner in c.items() for kind, body in inner.items()]
    assert named == [
        ("delete", "element", "dnat4_port", 1), ("delete", "element", "dnat4any_port", 1),
        ("delete", "element", "masq4", 1), ("delete", "element", "bridges", 1),
        ("delete", "chain", MASQ, 0), ("delete", "chain", "nat-output", 0), ("delete", "chain", "nat-prerouting", 0),
        ("delete", "map", "dnat4_port", 0), ("delete", "map", "dnat4any_port", 0)]
    # An element of someone unknown that jumps to a chain going away goes with it.
    orphaned = syntax.render_purge(listed, [], scheme.shared("masq:358a50354525812f"))
    assert [(kind, body["name"]) for c in orphaned for kind, body in c["delete"].items()] == [
        ("element", "masq4"), ("chain", MASQ)]
    assert syntax.render_purge(listed, [], [("table",)]) == [{"delete": {"table": {"family": "inet",
                                                                                     "name": "cni-bridge"}}}]
    assert syntax.render_purge(syntax.EMPTY, [C], [("table",)]) == []


def test_items_are_described_as_nft_lists_them() -> None:
    assert syntax.describe(("element", "dnat4any_addr", "tcp . 8080", "10.1.0.2", C)) == \
        "element tcp . 8080 : 10.1.0.2 in dnat4any_addr"
    assert syntax.describe(("chain", "nat-prerouting")) == "chain nat-prerouting"
    assert syntax.describe(("masq-chain", MASQ, "10.1.0.0/24", "")) == f"chain {MASQ}"
    assert syntax.describe(("set", "dnat4_addr")) == "map dnat4_addr"
    assert syntax.describe(("set", "bridges")) == "set bridges"
