"""The iptables driver against real iptables, both flavours, inside throwaway namespaces.

What every backend does alike (removal leaves the tables as they were, rollback, GC,
conflicts, concurrency, repair after a flush) is proven in test_firewall_drivers.py over
the same harness (tests/firewall_node.py); here is what is particular to iptables: the exact
lines iptables-save prints, a batch refused halfway, one family failing after the other,
rules deleted by hand, CHECK naming the missing line, where isolation sits, and comments
with characters that need quoting.
"""

from __future__ import annotations

from typing import Any

import pytest

from cni_bridge.firewall.iptables import scheme
from cni_bridge.firewall.model import AttachmentRules
from cni_bridge.firewall.portmap import PortMapping
from cni_bridge.network.naming import attachment_digest
from tests import nstools
from tests.firewall_node import IPTABLES, PORTS, Node, NodeFactory, attachment, node_of  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nstools.have_privileges(), reason="needs root and iproute2"),
]


@pytest.fixture(params=IPTABLES)
def node(request: pytest.FixtureRequest, node_of: NodeFactory) -> Node:  # noqa: F811
    return node_of(request.param)


def expected_lines(doc: dict[str, Any]) -> dict[int, list[str]]:
    """What iptables-save must print for an attachment, from the renderer (per family)."""
    rules = AttachmentRules(
        network=doc["network"], bridge=doc.get("bridge", "cnibr0"), container_id=doc["container_id"],
        ifname=doc.get("ifname", "eth0"), ips=tuple((ip, p) for ip, p in doc["ips"]),
        port_mappings=tuple(PortMapping(m["hostPort"], m["containerPort"], m.get("protocol", "tcp"),
                                        m.get("hostIP", "")) for m in doc.get("portMappings", [])),
        ip_masq=doc.get("ip_masq", False), isolate=doc.get("isolate", False), internal=doc.get("internal", False))
    out: dict[int, list[str]] = {}
    for fp in scheme.build(rules):
        lines = [f":{chain} - [0:0]" for _, chain in fp.chains]
        lines += [f":{chain} - [0:0]" for s in fp.shared for _, chain in s.chains]
        lines += [rule.saved for rule in fp.rules]
        lines += [rule.saved for s in fp.shared for rule in s.rules]
        out[fp.family] = lines
    return out


def assert_has(saved: str, lines: list[str]) -> None:
    present = set(saved.splitlines())
    absent = [line for line in lines if line not in present]
    assert not absent, "missing from iptables-save:\n" + "\n".join(absent) + "\n--- save:\n" + saved


def test_install_shows_exact_rules_and_remove_restores_the_tables(node: Node) -> None:
    before = node.saves()
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    after = node.saves()
    expected = expected_lines(doc)
    assert_has(after[0], expected[4])
    assert_has(after[1], expected[6])
    # A few lines spelled out, as iptables-save prints them on this backend.
    chain = scheme.dnat_chain(attachment_digest("n1", "c1", "eth0"))
    comment = '-m comment --comment "cni-bridge net=n1 id=c1 if=eth0"'
    assert_has(after[0], [
        f"-A {chain} -p tcp {comment} -m tcp --dport 8080 -j DNAT --to-destination 10.1.0.2:80",
        f"-A {chain} -s 127.0.0.1/32 -p udp {comment} -m udp --dport 5353 -j MARK --set-xmark 0x2000/0x2000",
        '-A PREROUTING -d 127.0.0.0/8 ! -i lo -m comment --comment "cni-bridge shared=localhost-guard" -j DROP',
    ])
    assert_has(after[1], [f"-A {chain} -p udp {comment} -m udp --dport 5353 -j DNAT --to-destination [fd00::2]:53"])
    # Shared rules that must come first are first.
    assert after[0].index('-A FORWARD -m comment --comment "cni-bridge shared=forward"') < after[0].index(
        "-A FORWARD -j CNI-FORWARD")
    node.ok("check", rules=doc)

    node.ok("remove", network="n1", container_id="c1")
    assert node.saves() == before
    assert node.records() == []
    node.ok("remove", network="n1", container_id="c1")  # idempotent
    assert node.saves() == before


def test_two_attachments_share_chains_and_the_last_one_removes_them(node: Node) -> None:
    before = node.saves()
    a = attachment("c1", ip_masq=True, portMappings=PORTS[:1])
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True,
                   portMappings=[{"hostPort": 8081, "containerPort": 80}])
    node.ok("install", rules=a)
    node.ok("install", rules=b)
    v4, v6 = node.saves()
    for saved in (v4, v6):
        assert saved.count(":CNIBR-HOSTPORT-DNAT ") == 1
        assert saved.count('-A FORWARD -m comment --comment "cni-bridge shared=forward"') == 1
        assert saved.count("shared=bridge:cnibr0") == 4
        assert saved.count("shared=masq-mark:13") == 1
    assert v4.count("shared=localhost-guard") == 1
    assert_has(v4, expected_lines(a)[4] + expected_lines(b)[4])

    node.ok("remove", network="n1", container_id="c1")
    v4, v6 = node.saves()
    assert "id=c1 " not in v4 + v6
    assert_has(v4, expected_lines(b)[4])
    assert_has(v6, expected_lines(b)[6])
    node.ok("check", rules=b)

    node.ok("remove", network="n1", container_id="c2")
    assert node.saves() == before
    assert node.records() == []


def test_failing_batch_leaves_nothing_installed(node: Node) -> None:
    node.ok("install", rules=attachment("c0", "10.1.0.9", None, portMappings=[{"hostPort": 7070, "containerPort": 80}]))
    before = node.saves()
    records = node.records()
    bad = attachment("c1", ip_masq=True, portMappings=PORTS, external_set_mark_chain="NO-SUCH-CHAIN")
    error = node.error("install", rules=bad)
    assert error["code"] == 109
    assert "NO-SUCH-CHAIN" in error["details"]
    assert node.saves() == before
    assert node.records() == records


def test_ipv6_failure_after_ipv4_success_removes_ipv4(node: Node) -> None:
    # The mark chain exists for IPv4 only, so the IPv6 batch is refused after the IPv4
    # one went through; nothing of either may stay.
    node.iptables(4, "-t", "nat", "-N", "MY-MARK")
    before = node.saves()
    error = node.error("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS,
                                                   external_set_mark_chain="MY-MARK"))
    assert error["code"] == 109
    assert "IPv6" in error["msg"]
    assert node.saves() == before
    assert node.records() == []


def test_remove_copes_with_rules_deleted_by_hand(node: Node) -> None:
    before = node.saves()
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    digest = attachment_digest("n1", "c1", "eth0")
    comment = "cni-bridge net=n1 id=c1 if=eth0"
    node.iptables(4, "-t", "nat", "-D", "POSTROUTING", "-s", "10.1.0.2/32", "-m", "comment", "--comment", comment,
                  "-j", scheme.masq_chain(digest))
    node.iptables(4, "-t", "nat", "-F", scheme.dnat_chain(digest))
    node.iptables(6, "-t", "filter", "-F", scheme.FORWARD_CHAIN)
    node.ok("remove", network="n1", container_id="c1")
    assert node.saves() == before
    assert node.records() == []


def test_check_reports_a_missing_rule(node: Node) -> None:
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    node.ok("check", rules=doc)
    digest = attachment_digest("n1", "c1", "eth0")
    node.iptables(6, "-t", "nat", "-D", scheme.masq_chain(digest), "-m", "comment", "--comment",
                  "cni-bridge net=n1 id=c1 if=eth0", "-j", "MASQUERADE")
    error = node.error("check", rules=doc)
    assert error["code"] == 108
    assert "MASQUERADE" in error["msg"] and "IPv6" in error["msg"]
    # A different configuration is a difference too.
    node.ok("remove", network="n1", container_id="c1")
    node.ok("install", rules=doc)
    changed = dict(doc, portMappings=PORTS[:1])
    assert node.error("check", rules=changed)["code"] == 108
    assert node.error("check", rules=attachment("c2", ip_masq=True))["code"] == 108


def test_isolated_and_internal_networks(node: Node) -> None:
    before = node.saves()
    iso = attachment("c1", bridge="br-iso", network="iso", isolate=True, ip_masq=True,
                     portMappings=[{"hostPort": 8080, "containerPort": 80}])
    internal = attachment("c2", "10.2.0.2", None, bridge="br-int", network="int", internal=True, ip_masq=True)
    plain = attachment("c3", "10.3.0.2", None, bridge="br-plain", network="plain")
    for doc in (iso, internal, plain):
        node.ok("install", rules=doc)
    v4, v6 = node.saves()
    assert_has(v4, expected_lines(iso)[4] + expected_lines(internal)[4] + expected_lines(plain)[4])
    # Internal: both families even without an IPv6 address, and no masquerade.
    assert_has(v6, expected_lines(internal)[6])
    assert "net=int " not in v4 + v6
    # Drops sit above the accepts in CNIBR-FORWARD, whatever the order of the ADDs.
    forward = [line for line in v4.splitlines() if line.startswith("-A CNIBR-FORWARD ")]
    drops = [i for i, line in enumerate(forward) if line.endswith("DROP") or "ISOLATE" in line]
    accepts = [i for i, line in enumerate(forward) if line.endswith("ACCEPT")]
    assert max(drops) < min(accepts), forward
    error = node.error("install", rules=dict(internal, portMappings=PORTS))
    assert error["code"] == 7
    for doc in (iso, internal, plain):
        node.ok("remove", network=doc["network"], container_id=doc["container_id"])
    assert node.saves() == before


def test_odd_characters_in_the_comment_round_trip(node: Node) -> None:
    before = node.saves()
    doc = attachment("c1", ip_masq=True, portMappings=PORTS[:1], ifname="e\"t'h\\")
    node.ok("install", rules=doc)
    assert_has(node.save(4), expected_lines(doc)[4])
    node.ok("check", rules=doc)
    node.ok("remove", network="n1", container_id="c1", ifname="e\"t'h\\")
    assert node.saves() == before
