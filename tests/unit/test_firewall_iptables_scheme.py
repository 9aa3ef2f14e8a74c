"""The firewall's rule rendering: pure functions, golden iptables-restore text.

The integration tests prove that iptables-save prints these lines back byte for byte on
both backends; here we pin the scheme itself.
"""

from __future__ import annotations

import pytest

from cni_bridge.errors import INVALID_CONFIG, CniError
from cni_bridge.firewall.iptables import scheme, syntax
from cni_bridge.firewall.model import parse_attachment_comment
from cni_bridge.firewall.iptables.scheme import Rule
from cni_bridge.firewall.model import AttachmentRules
from cni_bridge.firewall.portmap import Claim, PortMapping, claims
from cni_bridge.network.naming import attachment_digest

pytestmark = pytest.mark.unit

H = "836d7657cb16b8dc5"  # sha256("n1\0c1\0eth0")[:17]
C = '-m comment --comment "cni-bridge net=n1 id=c1 if=eth0"'


def rules(**overrides: object) -> AttachmentRules:
    base: dict[str, object] = dict(
        network="n1", bridge="cnibr0", container_id="c1", ifname="eth0",
        ips=(("10.1.0.2", 24), ("fd00::2", 64)), ip_masq=True,
        port_mappings=(PortMapping(8080, 80, "tcp"), PortMapping(5353, 53, "udp")))
    base.update(overrides)
    return AttachmentRules(**base)  # type: ignore[arg-type]


def by_family(r: AttachmentRules) -> dict[int, scheme.FamilyRules]:
    return {fp.family: fp for fp in scheme.build(r)}


GOLDEN_ADD_V4 = f"""\
*filter
:CNIBR-FORWARD - [0:0]
:CNIBR-ISOLATE-TO - [0:0]
:CNIBR-ISOLATE-FROM - [0:0]
-I FORWARD 1 -m comment --comment "cni-bridge shared=forward" -j CNIBR-FORWARD
-A CNIBR-FORWARD -o cnibr0 -m comment --comment "cni-bridge shared=bridge:cnibr0" -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
-A CNIBR-FORWARD -i cnibr0 -m comment --comment "cni-bridge shared=bridge:cnibr0" -j ACCEPT
-A CNIBR-ISOLATE-TO -o cnibr0 -m comment --comment "cni-bridge shared=bridge:cnibr0" -j DROP
-A CNIBR-ISOLATE-FROM -i cnibr0 -m comment --comment "cni-bridge shared=bridge:cnibr0" -j DROP
COMMIT
*raw
-I PREROUTING 1 -d 127.0.0.0/8 ! -i lo -m comment --comment "cni-bridge shared=localhost-guard" -j DROP
COMMIT
*nat
:CNIBR-HOSTPORT-DNAT - [0:0]
:CNIBR-MASQ-{H} - [0:0]
:CNIBR-DNAT-{H} - [0:0]
-A PREROUTING -m comment --comment "cni-bridge shared=hostport" -m addrtype --dst-type LOCAL -j CNIBR-HOSTPORT-DNAT
-A OUTPUT -m comment --comment "cni-bridge shared=hostport" -m addrtype --dst-type LOCAL -j CNIBR-HOSTPORT-DNAT
-I POSTROUTING 1 -m comment --comment "cni-bridge shared=masq-mark:13" -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNIBR-MASQ-{H} -d 10.1.0.0/24 {C} -j RETURN
-A CNIBR-MASQ-{H} -d 224.0.0.0/4 {C} -j RETURN
-A CNIBR-MASQ-{H} {C} -j MASQUERADE
-A POSTROUTING -s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}
-A CNIBR-DNAT-{H} -s 10.1.0.0/24 -p tcp {C} -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000
-A CNIBR-DNAT-{H} -s 127.0.0.1/32 -p tcp {C} -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000
-A CNIBR-DNAT-{H} -p tcp {C} -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.2:80
-A CNIBR-DNAT-{H} -s 10.1.0.0/24 -p udp {C} -m udp --dport 5353 -j MARK --set-xmark 0x2000/0x2000
-A CNIBR-DNAT-{H} -s 127.0.0.1/32 -p udp {C} -m udp --dport 5353 -j MARK --set-xmark 0x2000/0x2000
-A CNIBR-DNAT-{H} -p udp {C} -m udp --dport 5353 -j DNAT --to-destination 10.1.0.2:53
-A CNIBR-HOSTPORT-DNAT -p tcp {C} -m multiport --dports 8080 -j CNIBR-DNAT-{H}
-A CNIBR-HOSTPORT-DNAT -p udp {C} -m multiport --dports 5353 -j CNIBR-DNAT-{H}
COMMIT
"""

GOLDEN_ADD_V6_JOINING = f"""\
*nat
:CNIBR-MASQ-{H} - [0:0]
:CNIBR-DNAT-{H} - [0:0]
-A CNIBR-MASQ-{H} -d fd00::/64 {C} -j RETURN
-A CNIBR-MASQ-{H} -d ff00::/8 {C} -j RETURN
-A CNIBR-MASQ-{H} {C} -j MASQUERADE
-A POSTROUTING -s fd00::2/128 {C} -j CNIBR-MASQ-{H}
-A CNIBR-DNAT-{H} -s fd00::/64 -p tcp {C} -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000
-A CNIBR-DNAT-{H} -p tcp {C} -m tcp --dport 8080 -j DNAT --to-destination [fd00::2]:80
-A CNIBR-DNAT-{H} -s fd00::/64 -p udp {C} -m udp --dport 5353 -j MARK --set-xmark 0x2000/0x2000
-A CNIBR-DNAT-{H} -p udp {C} -m udp --dport 5353 -j DNAT --to-destination [fd00::2]:53
-A CNIBR-HOSTPORT-DNAT -p tcp {C} -m multiport --dports 8080 -j CNIBR-DNAT-{H}
-A CNIBR-HOSTPORT-DNAT -p udp {C} -m multiport --dports 5353 -j CNIBR-DNAT-{H}
COMMIT
"""

GOLDEN_DELETE_V4 = f"""\
*nat
:CNIBR-MASQ-{H} - [0:0]
:CNIBR-DNAT-{H} - [0:0]
-D POSTROUTING -s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}
-D CNIBR-HOSTPORT-DNAT -p tcp {C} -m multiport --dports 8080 -j CNIBR-DNAT-{H}
-D CNIBR-HOSTPORT-DNAT -p udp {C} -m multiport --dports 5353 -j CNIBR-DNAT-{H}
-X CNIBR-MASQ-{H}
-X CNIBR-DNAT-{H}
COMMIT
"""

GOLDEN_DELETE_LAST_V6 = f"""\
*nat
:CNIBR-MASQ-{H} - [0:0]
:CNIBR-DNAT-{H} - [0:0]
:CNIBR-HOSTPORT-DNAT - [0:0]
-D POSTROUTING -s fd00::2/128 {C} -j CNIBR-MASQ-{H}
-D PREROUTING -m comment --comment "cni-bridge shared=hostport" -m addrtype --dst-type LOCAL -j CNIBR-HOSTPORT-DNAT
-D OUTPUT -m comment --comment "cni-bridge shared=hostport" -m addrtype --dst-type LOCAL -j CNIBR-HOSTPORT-DNAT
-D POSTROUTING -m comment --comment "cni-bridge shared=masq-mark:13" -m mark --mark 0x2000/0x2000 -j MASQUERADE
-X CNIBR-MASQ-{H}
-X CNIBR-DNAT-{H}
-X CNIBR-HOSTPORT-DNAT
COMMIT
*filter
:CNIBR-FORWARD - [0:0]
:CNIBR-ISOLATE-TO - [0:0]
:CNIBR-ISOLATE-FROM - [0:0]
-D FORWARD -m comment --comment "cni-bridge shared=forward" -j CNIBR-FORWARD
-X CNIBR-FORWARD
-X CNIBR-ISOLATE-TO
-X CNIBR-ISOLATE-FROM
COMMIT
"""


def test_first_attachment_creates_everything() -> None:
    fp = by_family(rules())[4]
    assert syntax.render_add(fp.chains, fp.rules, fp.shared) == GOLDEN_ADD_V4


def test_joining_attachment_adds_only_its_own_nat_rules() -> None:
    fp = by_family(rules())[6]
    assert syntax.render_add(fp.chains, fp.rules, ()) == GOLDEN_ADD_V6_JOINING


def test_delete_of_one_of_several_touches_only_its_nat_rules() -> None:
    fp = by_family(rules())[4]
    assert syntax.render_delete(fp.chains, fp.rules, ()) == GOLDEN_DELETE_V4


def test_delete_of_the_last_user_removes_shared_chains_without_deleting_rules_inside_them() -> None:
    fp = by_family(rules())[6]
    text = syntax.render_delete(fp.chains, fp.rules, fp.shared)
    assert text == GOLDEN_DELETE_LAST_V6
    # Rules inside flushed chains are not -D'd (that would fail after the flush).
    assert "-D CNIBR-HOSTPORT-DNAT" not in text and "-D CNIBR-FORWARD" not in text


def test_shared_keys_per_family() -> None:
    plans = by_family(rules())
    assert [s.key for s in plans[4].shared] == [
        "forward", "bridge:cnibr0", "localhost-guard", "hostport", "masq-mark:13"]
    # No localhost guard for IPv6: ::1 is never routed off the host.
    assert [s.key for s in plans[6].shared] == ["forward", "bridge:cnibr0", "hostport", "masq-mark:13"]


def test_chain_names_fit_iptables_and_include_ifname() -> None:
    digest = attachment_digest("n1", "c1", "eth0")
    assert scheme.masq_chain(digest) == f"CNIBR-MASQ-{H}"
    assert scheme.dnat_chain(digest) == f"CNIBR-DNAT-{H}"
    assert len(scheme.masq_chain(digest)) == scheme.MAX_CHAIN_NAME == 28
    other = attachment_digest("n1", "c1", "eth1")
    assert scheme.masq_chain(other) != scheme.masq_chain(digest)
    # NUL separation: moving a character between fields changes the hash.
    assert attachment_digest("n1", "c1e", "th0") != digest


@pytest.mark.parametrize(("value", "quoted"), [
    ("plain", "plain"),
    ("with-dash_9", "with-dash_9"),
    ("", '""'),
    ("a b", '"a b"'),
    ("x=y", '"x=y"'),
    ('a"b\\c\'d', '"a\\"b\\\\c\\\'d"'),
])
def test_quote_is_iptables_save_quoting(value: str, quoted: str) -> None:
    assert syntax.quote(value) == quoted
    assert syntax.unquote(quoted + " -j X") == (value, "-j X")


def test_comment_with_odd_characters_is_escaped_and_parsed_back() -> None:
    r = rules(ifname="e\"t'h\\", port_mappings=())
    fp = by_family(r)[4]
    spec = fp.rules[-1].spec
    assert '--comment "cni-bridge net=n1 id=c1 if=e\\"t\\\'h\\\\"' in spec
    comment = syntax.comment_of(spec)
    assert comment is not None
    assert parse_attachment_comment(comment) == ("n1", "c1", "e\"t'h\\")


def test_comment_control_characters_and_length() -> None:
    assert scheme.attachment_comment("n", "a\nb", "eth0") == "cni-bridge net=n id=a?b if=eth0"
    long = scheme.attachment_comment("n" * 300, "c", "eth0")
    assert len(long.encode()) == syntax.COMMENT_MAX


def test_host_ip_selects_family_and_adds_destination() -> None:
    r = rules(ip_masq=False, port_mappings=(
        PortMapping(80, 8080, "tcp", "192.0.2.1"),
        PortMapping(81, 8081, "tcp", "0.0.0.0"),
        PortMapping(82, 8082, "tcp", "::"),
        PortMapping(83, 8083, "tcp", "2001:db8::1"),
    ))
    plans = by_family(r)
    v4 = [rule.spec for rule in plans[4].rules if "DNAT --to" in rule.spec]
    v6 = [rule.spec for rule in plans[6].rules if "DNAT --to" in rule.spec]
    assert v4 == [
        f"-d 192.0.2.1/32 -p tcp {C} -m tcp --dport 80 -j DNAT --to-destination 10.1.0.2:8080",
        f"-p tcp {C} -m tcp --dport 81 -j DNAT --to-destination 10.1.0.2:8081",
    ]
    assert v6 == [
        f"-p tcp {C} -m tcp --dport 82 -j DNAT --to-destination [fd00::2]:8082",
        f"-d 2001:db8::1/128 -p tcp {C} -m tcp --dport 83 -j DNAT --to-destination [fd00::2]:8083",
    ]
    hairpin = [rule.spec for rule in plans[4].rules if rule.spec.startswith("-s 10.1.0.0/24 -d 192.0.2.1/32")]
    assert hairpin == [f"-s 10.1.0.0/24 -d 192.0.2.1/32 -p tcp {C} -m tcp --dport 80 -j MARK --set-xmark 0x2000/0x2000"]
    assert claims(r) == (Claim("tcp", 80, "192.0.2.1"), Claim("tcp", 81, "0.0.0.0"),
                              Claim("tcp", 82, "::"), Claim("tcp", 83, "2001:db8::1"))


def test_claims_only_in_families_with_an_address() -> None:
    r = rules(ips=(("10.1.0.2", 24),), port_mappings=(PortMapping(80, 80, "tcp"), PortMapping(80, 80, "tcp")))
    assert claims(r) == (Claim("tcp", 80, "0.0.0.0"),)
    assert list(by_family(r)) == [4]


def test_snat_false_has_no_marks() -> None:
    fp = by_family(rules(snat=False, ip_masq=False))[4]
    assert not any("MARK" in rule.spec for rule in fp.rules)
    assert "masq-mark:13" not in [s.key for s in fp.shared]


def test_masq_all_marks_every_source_and_drops_the_localhost_rule() -> None:
    fp = by_family(rules(masq_all=True, ip_masq=False, port_mappings=(PortMapping(80, 8080, "tcp"),)))[4]
    assert [rule.spec for rule in fp.rules if rule.chain.startswith("CNIBR-DNAT-")] == [
        f"-p tcp {C} -m tcp --dport 80 -j MARK --set-xmark 0x2000/0x2000",
        f"-p tcp {C} -m tcp --dport 80 -j DNAT --to-destination 10.1.0.2:8080",
    ]


def test_external_set_mark_chain_replaces_mark_and_shared_masquerade() -> None:
    fp = by_family(rules(external_set_mark_chain="KUBE-MARK-MASQ", ip_masq=False,
                         port_mappings=(PortMapping(80, 8080, "tcp"),)))[4]
    marks = [rule.spec for rule in fp.rules if "KUBE-MARK-MASQ" in rule.spec]
    assert marks == [f"-s 10.1.0.0/24 -p tcp {C} -m tcp --dport 80 -j KUBE-MARK-MASQ",
                     f"-s 127.0.0.1/32 -p tcp {C} -m tcp --dport 80 -j KUBE-MARK-MASQ"]
    assert not any(s.key.startswith("masq-mark") for s in fp.shared)


def test_mark_bit_is_used_in_both_places() -> None:
    fp = by_family(rules(mark_masq_bit=0, ip_masq=False))[4]
    assert any(rule.spec.endswith("-j MARK --set-xmark 0x1/0x1") for rule in fp.rules)
    shared = {s.key: s for s in fp.shared}
    assert shared["masq-mark:0"].rules[0].spec.endswith("-m mark --mark 0x1/0x1 -j MASQUERADE")
    assert scheme.mark_value(31) == "0x80000000/0x80000000"


def test_more_than_15_ports_are_split_for_multiport() -> None:
    mappings = tuple(PortMapping(1000 + i, 80, "tcp") for i in range(17))
    fp = by_family(rules(ips=(("10.1.0.2", 24),), ip_masq=False, port_mappings=mappings))[4]
    jumps = [rule.spec for rule in fp.rules if rule.chain == scheme.HOSTPORT_CHAIN]
    assert jumps == [
        f"-p tcp {C} -m multiport --dports {','.join(str(1000 + i) for i in range(15))} -j CNIBR-DNAT-{H}",
        f"-p tcp {C} -m multiport --dports 1015,1016 -j CNIBR-DNAT-{H}",
    ]


def test_masquerade_exemptions_subnets_excludes_multicast() -> None:
    fp = by_family(rules(ips=(("10.1.0.2", 24),), port_mappings=(), subnets=("10.1.0.0/24", "10.2.0.0/16"),
                         masq_exclude=("192.168.0.0/16", "fd99::/64", "10.2.0.0/16")))[4]
    assert [rule.spec for rule in fp.rules] == [
        f"-d 10.1.0.0/24 {C} -j RETURN",
        f"-d 10.2.0.0/16 {C} -j RETURN",
        f"-d 192.168.0.0/16 {C} -j RETURN",
        f"-d 224.0.0.0/4 {C} -j RETURN",
        f"{C} -j MASQUERADE",
        f"-s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}",
    ]


def test_attachment_without_masq_or_ports_only_uses_bridge_forwarding() -> None:
    fp = by_family(rules(ip_masq=False, port_mappings=(), ips=(("10.1.0.2", 24),)))[4]
    assert fp.chains == () and fp.rules == ()
    assert [s.key for s in fp.shared] == ["forward", "bridge:cnibr0"]


def test_l2_only_attachment_needs_nothing() -> None:
    assert scheme.build(rules(ips=(), port_mappings=())) == ()


def test_internal_network_drops_outside_traffic_in_both_families_and_never_masquerades() -> None:
    plans = by_family(rules(internal=True, ips=(("10.1.0.2", 24),), port_mappings=()))
    assert sorted(plans) == [4, 6]
    for fp in plans.values():
        assert fp.chains == () and fp.rules == ()
        assert [s.key for s in fp.shared] == ["forward", "internal:cnibr0"]
    internal = plans[4].shared[1]
    s = '-m comment --comment "cni-bridge shared=internal:cnibr0"'
    assert [(r.chain, r.spec, r.insert) for r in internal.rules] == [
        ("CNIBR-FORWARD", f"-i cnibr0 ! -o cnibr0 {s} -j DROP", True),
        ("CNIBR-FORWARD", f"! -i cnibr0 -o cnibr0 {s} -j DROP", True),
        ("CNIBR-FORWARD", f"-i cnibr0 -o cnibr0 {s} -j ACCEPT", False),
    ]


def test_isolation_drops_to_and_from_other_managed_bridges_except_dnat() -> None:
    fp = by_family(rules(isolate=True, ip_masq=False, port_mappings=(), bridge="br-iso", ips=(("10.1.0.2", 24),)))[4]
    assert [s.key for s in fp.shared] == ["forward", "bridge:br-iso", "isolate:br-iso"]
    s = '-m comment --comment "cni-bridge shared=isolate:br-iso"'
    assert [(r.chain, r.spec, r.insert) for r in fp.shared[2].rules] == [
        ("CNIBR-FORWARD", f"-i br-iso ! -o br-iso {s} -m conntrack ! --ctstate DNAT -j CNIBR-ISOLATE-TO", True),
        ("CNIBR-FORWARD", f"! -i br-iso -o br-iso {s} -m conntrack ! --ctstate DNAT -j CNIBR-ISOLATE-FROM", True),
    ]


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(internal=True), "internal network"),
    (dict(mark_masq_bit=32), "markMasqBit"),
    (dict(port_mappings=(PortMapping(80, 80, "icmp"),)), "protocol"),
    (dict(port_mappings=(PortMapping(0, 80, "tcp"),)), "hostPort"),
    (dict(port_mappings=(PortMapping(80, 70000, "tcp"),)), "containerPort"),
    (dict(port_mappings=(PortMapping(80, 80, "tcp", "not-an-ip"),)), "hostIP"),
    (dict(external_set_mark_chain="BAD CHAIN"), "externalSetMarkChain"),
    (dict(external_set_mark_chain="X" * 29), "externalSetMarkChain"),
    (dict(bridge="br 0"), "bridge"),
    (dict(masq_exclude=("10.0.0.0/33",)), "ipMasqExclude"),
])
def test_invalid_input_is_a_config_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(CniError) as info:
        scheme.build(rules(**overrides))
    assert info.value.code == INVALID_CONFIG
    assert message in info.value.msg


SAVED_NAT = f"""\
# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNIBR-HOSTPORT-DNAT - [0:0]
:CNIBR-MASQ-{H} - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}
-A POSTROUTING -s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}
-A POSTROUTING -s 10.9.0.2/32 -m comment --comment "cni-bridge net=n1 id=c9 if=eth0" -j CNIBR-MASQ-0000
-A CNIBR-HOSTPORT-DNAT -p tcp {C} -m multiport --dports 8080 -j CNIBR-DNAT-{H}
-A CNIBR-MASQ-{H} {C} -j MASQUERADE
COMMIT
*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -j ACCEPT
COMMIT
"""


def test_cleanup_removes_what_exists_of_ours_including_duplicates() -> None:
    saved = syntax.parse_save("nat", SAVED_NAT)
    assert saved.chains == ("PREROUTING", "POSTROUTING", "CNI-HOSTPORT-DNAT", "CNIBR-HOSTPORT-DNAT", f"CNIBR-MASQ-{H}")
    chains = {f"CNIBR-MASQ-{H}", f"CNIBR-DNAT-{H}"}
    text = syntax.render_cleanup([saved], chains, {"cni-bridge net=n1 id=c1 if=eth0"})
    assert text == f"""\
*nat
:CNIBR-MASQ-{H} - [0:0]
-D POSTROUTING -s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}
-D POSTROUTING -s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}
-D CNIBR-HOSTPORT-DNAT -p tcp {C} -m multiport --dports 8080 -j CNIBR-DNAT-{H}
-X CNIBR-MASQ-{H}
COMMIT
"""
    assert syntax.render_cleanup([saved], {"CNIBR-NOPE"}, {"nothing"}) == ""


def test_missing_lists_absent_chains_and_rules() -> None:
    saved = [syntax.parse_save("nat", SAVED_NAT)]
    present = Rule("nat", f"CNIBR-MASQ-{H}", f"{C} -j MASQUERADE")
    absent = Rule("nat", f"CNIBR-MASQ-{H}", f"-d 224.0.0.0/4 {C} -j RETURN")
    assert syntax.missing(saved, [("nat", f"CNIBR-MASQ-{H}"), ("nat", "CNIBR-GONE")], [present, absent]) == [
        "nat: chain CNIBR-GONE", f"nat: {absent.saved}"]
    assert syntax.missing(saved, [("raw", "X")], []) == ["raw: chain X"]


def test_target_and_comment_of() -> None:
    spec = f"-s 10.1.0.2/32 {C} -j CNIBR-MASQ-{H}"
    assert syntax.target_of(spec) == f"CNIBR-MASQ-{H}"
    assert syntax.target_of("-p tcp -j DNAT --to-destination 1.2.3.4:5") == "DNAT"
    assert syntax.comment_of(spec) == "cni-bridge net=n1 id=c1 if=eth0"
    assert syntax.comment_of("-j ACCEPT") is None
    assert parse_attachment_comment("cni-bridge shared=forward") is None
    assert parse_attachment_comment("something else entirely") is None


def test_shared_definitions_are_fixed_by_key() -> None:
    assert scheme.shared("bridge:br0", 4) == scheme.shared("bridge:br0", 4)
    with pytest.raises(ValueError):
        scheme.shared("nonsense", 4)
    assert scheme.kind_rank("forward") < scheme.kind_rank("bridge:x") < scheme.kind_rank("nonsense")
