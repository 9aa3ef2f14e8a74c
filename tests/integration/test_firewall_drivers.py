"""The firewall orchestration against the real kernel, on every backend: the iptables
driver in both flavours (nf_tables, legacy) and the nftables driver, in throwaway
namespaces (tests/firewall_node.py).

What every backend must do the same: leave the node's firewall exactly as it was after the
last removal, also after a rollback, a repeated ADD, rules flushed by a firewall reload,
records lost, a GC, concurrent commands and a state directory reused in a new namespace;
and refuse a taken host port without changing anything. What is particular to a backend
(its exact rules, how it fails, what tampering it notices) is in test_firewall_iptables.py
and test_firewall_nftables.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import nstools
from tests.firewall_node import BACKENDS, PORTS, Node, NodeFactory, attachment, node_of  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nstools.have_privileges(), reason="needs root and iproute2"),
]


@pytest.fixture(params=BACKENDS)
def node(request: pytest.FixtureRequest, node_of: NodeFactory) -> Node:  # noqa: F811
    return node_of(request.param)


def test_install_then_remove_restores_the_firewall(node: Node) -> None:
    before = node.snapshot()
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    assert "id=c1 " in node.ours()
    node.ok("check", rules=doc)
    node.ok("remove", network="n1", container_id="c1")
    assert node.snapshot() == before
    assert node.records() == []
    node.ok("remove", network="n1", container_id="c1")  # idempotent
    assert node.snapshot() == before


def test_add_rollback_undo_restores_the_firewall(node: Node) -> None:
    before = node.snapshot()
    node.ok("install_undo", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    assert node.snapshot() == before
    assert node.records() == []


def test_shared_resources_go_with_their_last_user(node: Node) -> None:
    before = node.snapshot()
    a = attachment("c1", ip_masq=True, portMappings=PORTS[:1])
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    node.ok("install", rules=a)
    node.ok("install", rules=b)
    node.ok("remove", network="n1", container_id="c1")
    assert "id=c1 " not in node.ours() and "id=c2 " in node.ours()
    node.ok("check", rules=b)
    node.ok("remove", network="n1", container_id="c2")
    assert node.snapshot() == before
    assert node.records() == []


def test_readd_of_the_same_attachment_replaces_its_rules(node: Node) -> None:
    before = node.snapshot()
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    once = node.snapshot()
    node.ok("install", rules=doc)
    assert node.snapshot() == once
    node.ok("remove", network="n1", container_id="c1")
    assert node.snapshot() == before


def test_remove_after_our_rules_were_flushed(node: Node) -> None:
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    node.flush_ours()
    node.ok("remove", network="n1", container_id="c1")
    assert node.ours() == ""
    assert node.records() == []


def test_add_after_our_rules_were_flushed_repairs_the_shared_ones(node: Node) -> None:
    # A firewall reload flushed everything while a container was running: the next ADD
    # must put the shared rules back instead of failing on the missing chains or table.
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    node.flush_ours()
    flushed = node.snapshot()
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    node.ok("install", rules=b)
    node.ok("check", rules=b)
    assert node.error("check", rules=attachment("c1", ip_masq=True, portMappings=PORTS))["code"] == 108
    node.ok("remove", network="n1", container_id="c1")
    node.ok("remove", network="n1", container_id="c2")
    assert node.snapshot() == flushed
    assert node.records() == []


def test_check_fails_for_a_configuration_that_changed(node: Node) -> None:
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    assert node.error("check", rules=dict(doc, portMappings=PORTS[:1]))["code"] == 108
    assert node.error("check", rules=attachment("c2", ip_masq=True))["code"] == 108
    other = "iptables" if node.nftables else "nftables"
    if not shutil.which("nft") and other == "nftables":
        return
    error = node.error("check", rules=doc, driver=other)
    assert error["code"] == 108 and "backend" in error["details"]


def test_gc_removes_only_stale_attachments(node: Node) -> None:
    before = node.snapshot()
    a = attachment("c1", ip_masq=True, portMappings=PORTS[:1])
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    c = attachment("c3", "10.2.0.3", None, network="n2", bridge="cnibr1", ip_masq=True,
                   portMappings=[{"hostPort": 8082, "containerPort": 80}])
    for doc in (a, b, c):
        node.ok("install", rules=doc)
    assert node.ok("gc", network="n1", valid=[["c1", "eth0"]]) == []
    assert "id=c2 " not in node.ours()
    node.ok("check", rules=a)
    node.ok("check", rules=c)
    assert node.error("check", rules=b)["code"] == 108
    # c2's port is free again.
    node.ok("install", rules=attachment("c4", "10.1.0.4", None, portMappings=[{"hostPort": 8081, "containerPort": 80}]))
    assert node.ok("gc", network="n1", valid=[]) == []
    assert node.ok("gc", network="n2", valid=[]) == []
    assert node.snapshot() == before
    assert node.records() == []


def test_gc_removes_rules_whose_record_was_lost(node: Node) -> None:
    before = node.snapshot()
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    node.ok("install", rules=attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True))
    for record in Path(node.state_dir, "attachments").iterdir():
        record.unlink()
    assert node.ok("gc", network="n1", valid=[["c2", "eth0"]], sweep=[node.driver]) == []
    ours = node.ours()
    assert "id=c1 " not in ours
    assert "id=c2 " in ours  # valid: kept, record or not
    assert "fd00::3" in ours and "10.1.0.3" in ours
    assert node.ok("gc", network="n1", valid=[], sweep=[node.driver]) == []
    assert node.snapshot() == before


def test_port_conflicts_name_the_holder_and_change_nothing(node: Node) -> None:
    node.ok("install", rules=attachment("c1", portMappings=PORTS[:1]))
    before = node.snapshot()
    records = node.records()
    error = node.error("install", rules=attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True,
                                                   portMappings=[{"hostPort": 8080, "containerPort": 81}]))
    assert error["code"] == 110
    assert "c1" in error["msg"] and "eth0" in error["msg"] and "8080/tcp" in error["msg"]
    assert node.snapshot() == before
    assert node.records() == records
    # A wildcard covers every address of its family.
    error = node.error("install", rules=attachment("c3", "10.1.0.4", None, portMappings=[
        {"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"}]))
    assert error["code"] == 110
    # Another protocol, or the same port on two different addresses, is fine.
    node.ok("install", rules=attachment("c4", "10.1.0.5", None, portMappings=[
        {"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]))
    node.ok("install", rules=attachment("c5", "10.1.0.6", None, portMappings=[
        {"hostPort": 9090, "containerPort": 80, "hostIP": "192.0.2.1"}]))
    node.ok("install", rules=attachment("c6", "10.1.0.7", None, portMappings=[
        {"hostPort": 9090, "containerPort": 80, "hostIP": "192.0.2.2"}]))
    assert node.error("install", rules=attachment("c7", "10.1.0.8", None, portMappings=[
        {"hostPort": 9090, "containerPort": 80, "hostIP": "0.0.0.0"}]))["code"] == 110
    # Released on DEL.
    node.ok("remove", network="n1", container_id="c1")
    node.ok("install", rules=attachment("c2", "10.1.0.3", "fd00::3", portMappings=[
        {"hostPort": 8080, "containerPort": 81}]))


def test_concurrent_adds_and_dels_keep_shared_resources_consistent(node: Node) -> None:
    before = node.snapshot()
    docs = [attachment(f"c{i}", f"10.1.0.{10 + i}", f"fd00::{10 + i:x}", ip_masq=True,
                       portMappings=[{"hostPort": 8000 + i, "containerPort": 80}]) for i in range(8)]
    assert all("ok" in a for a in node.call_parallel("install", [{"rules": d} for d in docs]))
    if not node.nftables:  # nftables names its chains: there cannot be two of one
        for saved in node.saves():
            assert saved.count(":CNIBR-HOSTPORT-DNAT ") == 1
            assert saved.count("shared=forward") == 1 and saved.count("shared=masq-mark:13") == 1
    for doc in docs:
        node.ok("check", rules=doc)
    removals = [{"network": "n1", "container_id": d["container_id"]} for d in docs]
    assert all("ok" in a for a in node.call_parallel("remove", removals))
    assert node.snapshot() == before
    assert node.records() == []


def test_records_of_another_namespace_are_discarded(node: Node) -> None:
    # The same state directory used from a new namespace (a reboot looks the same): the
    # old records describe tables that do not exist here, and must not block the port.
    node.ok("install", rules=attachment("c1", portMappings=PORTS))
    with nstools.throwaway_netns(prefix="cbfw") as (other_ns,):
        other = Node(other_ns, node.backend, Path(node.state_dir))
        other.ok("install", rules=attachment("c2", portMappings=PORTS))
        claims = [r for r in other.records() if r.startswith("ports/")]
        assert claims and all("c2" in Path(node.state_dir, r).read_text() for r in claims)
        other.ok("remove", network="n1", container_id="c2")
        other.ok("remove", network="n1", container_id="c1")  # unknown here: nothing to do
        assert other.ours() == ""
        assert other.records() == []


@pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs the conntrack CLI to create entries")
def test_flush_udp_conntrack_deletes_only_matching_entries(node_of: NodeFactory) -> None:  # noqa: F811
    node = node_of("nft")  # the flush is the same for every backend

    def entry(src: str, dst: str, proto: str, dport: int) -> list[str]:
        extra = ["--state", "ESTABLISHED"] if proto == "tcp" else []
        return ["-s", src, "-d", dst, "-p", proto, "--sport", "40000", "--dport", str(dport), *extra,
                "--timeout", "120"]

    for args in (entry("192.0.2.1", "192.0.2.2", "udp", 5353), entry("192.0.2.1", "192.0.2.3", "udp", 5353),
                 entry("2001:db8::1", "2001:db8::2", "udp", 5353), entry("192.0.2.1", "192.0.2.2", "udp", 5354),
                 entry("192.0.2.1", "192.0.2.2", "tcp", 5353)):
        nstools.run_in_netns(node.ns, "conntrack", "-I", *args)
    assert node.ok("flush_udp_conntrack", ports=[5353]) == 3
    left = [line for family in ("ipv4", "ipv6")
            for line in nstools.run_in_netns(node.ns, "conntrack", "-L", "-f", family).stdout.splitlines()]
    assert len(left) == 2, left
    assert any(line.startswith("udp") and "dport=5354" in line for line in left)
    assert any(line.startswith("tcp") and "dport=5353" in line for line in left)
    assert node.ok("flush_udp_conntrack", ports=[5353]) == 0
