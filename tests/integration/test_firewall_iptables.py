"""cni_bridge.firewall against real iptables, on both backends, inside throwaway namespaces.

iptables state is per network namespace: every call of the firewall runs in a child
process started with ``ip netns exec <ns>`` (tests/integration/firewall_driver.py), and
every iptables command of the tests does too. The root namespace's tables are never
read or written. Each namespace first gets hand-made rules of the reference plugins
(CNI-HOSTPORT-DNAT and friends) in every table and family, and most tests end by
comparing the full iptables-save output with the one taken before: those rules must
come through untouched, and ours must be gone without a trace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.firewall.iptables import scheme
from cni_bridge.firewall.model import AttachmentRules
from cni_bridge.firewall.portmap import PortMapping
from cni_bridge.network.naming import attachment_digest
from tests import nstools

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ("nft", "legacy")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nstools.have_privileges(), reason="needs root and iproute2"),
    pytest.mark.skipif(not all(shutil.which(f"{base}-{b}-{kind}") for base in ("iptables", "ip6tables")
                               for b in BACKENDS for kind in ("save", "restore")),
                       reason="needs iptables with both backends (Debian package iptables)"),
]

# Reference-plugin rules the firewall must leave alone, per family (table, iptables args).
REFERENCE_RULES = [
    ("nat", ["-N", "CNI-HOSTPORT-DNAT"]),
    ("nat", ["-A", "CNI-HOSTPORT-DNAT", "-p", "tcp", "-m", "tcp", "--dport", "9999", "-j", "RETURN"]),
    ("nat", ["-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]),
    ("nat", ["-A", "POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "ACCEPT"]),
    ("filter", ["-N", "CNI-FORWARD"]),
    ("filter", ["-A", "FORWARD", "-j", "CNI-FORWARD"]),
    ("raw", ["-A", "PREROUTING", "-i", "lo", "-j", "ACCEPT"]),
]


class Node:
    """A throwaway namespace playing the host, with one iptables backend and a state dir."""

    def __init__(self, ns: str, backend: str, state_dir: Path) -> None:
        self.ns = ns
        self.backend = backend
        self.state_dir = str(state_dir)

    def call(self, op: str, **request: Any) -> dict[str, Any]:
        request.update(op=op, state_dir=self.state_dir)
        env = dict(os.environ, CNI_BRIDGE_IPTABLES=self.backend, PYTHONPATH=str(REPO))
        done = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.integration.firewall_driver",
             json.dumps(request)], capture_output=True, text=True, cwd=REPO, env=env, check=False)
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def call_parallel(self, op: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start one firewall call per request at once, as a runtime starting pods does."""
        env = dict(os.environ, CNI_BRIDGE_IPTABLES=self.backend, PYTHONPATH=str(REPO))
        procs = [subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.integration.firewall_driver",
             json.dumps(dict(r, op=op, state_dir=self.state_dir))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env) for r in requests]
        answers = []
        for proc in procs:
            out, err = proc.communicate()
            assert proc.returncode == 0, err
            answers.append(json.loads(out))
        return answers

    def ok(self, op: str, **request: Any) -> Any:
        answer = self.call(op, **request)
        assert "error" not in answer, answer
        return answer["ok"]

    def error(self, op: str, **request: Any) -> dict[str, Any]:
        answer = self.call(op, **request)
        assert "error" in answer, answer
        error: dict[str, Any] = answer["error"]
        return error

    def iptables(self, family: int, *args: str, check: bool = True) -> str:
        base = "iptables" if family == 4 else "ip6tables"
        return nstools.run_in_netns(self.ns, f"{base}-{self.backend}", "-w", *args, check=check).stdout

    def save(self, family: int = 4) -> str:
        base = "iptables" if family == 4 else "ip6tables"
        out = nstools.run_in_netns(self.ns, f"{base}-{self.backend}-save").stdout
        return "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))

    def saves(self) -> tuple[str, str]:
        return self.save(4), self.save(6)

    def records(self) -> list[str]:
        root = Path(self.state_dir)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and p.name not in ("lock", "generation"))


@pytest.fixture(params=BACKENDS)
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    with nstools.throwaway_netns(prefix="cbfw") as (ns,):
        n = Node(ns, request.param, tmp_path / "state")
        for family in (4, 6):
            for table, args in REFERENCE_RULES:
                n.iptables(family, "-t", table, *args)
        yield n


def attachment(cid: str, ip4: str = "10.1.0.2", ip6: str | None = "fd00::2", network: str = "n1",
               **extra: Any) -> dict[str, Any]:
    ips: list[list[Any]] = [[ip4, 24]]
    if ip6:
        ips.append([ip6, 64])
    doc: dict[str, Any] = {"network": network, "container_id": cid, "ifname": "eth0", "ips": ips}
    doc.update(extra)
    return doc


PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
         {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]


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


def test_add_rollback_undo_restores_the_tables(node: Node) -> None:
    before = node.saves()
    node.ok("install_undo", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    assert node.saves() == before
    assert node.records() == []


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


def test_readd_of_the_same_attachment_replaces_its_rules(node: Node) -> None:
    before = node.saves()
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    once = node.saves()
    node.ok("install", rules=doc)
    assert node.saves() == once
    node.ok("remove", network="n1", container_id="c1")
    assert node.saves() == before


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


def test_remove_after_tables_were_flushed_entirely(node: Node) -> None:
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    for family in (4, 6):
        for table in ("nat", "filter", "raw"):
            node.iptables(family, "-t", table, "-F")
            node.iptables(family, "-t", table, "-X")
    node.ok("remove", network="n1", container_id="c1")
    v4, v6 = node.saves()
    assert "CNIBR" not in v4 + v6 and "cni-bridge" not in v4 + v6
    assert node.records() == []


def test_add_after_tables_were_flushed_repairs_shared_rules(node: Node) -> None:
    # A firewall reload flushed everything while a container was running: the next ADD
    # must put the shared rules back instead of failing on the missing chains.
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    for family in (4, 6):
        for table in ("nat", "filter", "raw"):
            node.iptables(family, "-t", table, "-F")
            node.iptables(family, "-t", table, "-X")
    flushed = node.saves()
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    node.ok("install", rules=b)
    node.ok("check", rules=b)
    assert node.error("check", rules=attachment("c1", ip_masq=True, portMappings=PORTS))["code"] == 108
    node.ok("remove", network="n1", container_id="c1")
    node.ok("remove", network="n1", container_id="c2")
    assert node.saves() == flushed
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


def test_gc_removes_only_stale_attachments(node: Node) -> None:
    before = node.saves()
    a = attachment("c1", ip_masq=True, portMappings=PORTS[:1])
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    c = attachment("c3", "10.2.0.3", None, network="n2", bridge="cnibr1", ip_masq=True,
                   portMappings=[{"hostPort": 8082, "containerPort": 80}])
    for doc in (a, b, c):
        node.ok("install", rules=doc)
    assert node.ok("gc", network="n1", valid=[["c1", "eth0"]]) == []
    v4, v6 = node.saves()
    assert "id=c2 " not in v4 + v6
    node.ok("check", rules=a)
    node.ok("check", rules=c)
    assert node.error("check", rules=b)["code"] == 108
    # c2's port is free again.
    node.ok("install", rules=attachment("c4", "10.1.0.4", None, portMappings=[{"hostPort": 8081, "containerPort": 80}]))
    assert node.ok("gc", network="n1", valid=[]) == []
    assert node.ok("gc", network="n2", valid=[]) == []
    assert node.saves() == before
    assert node.records() == []


def test_gc_removes_rules_whose_record_was_lost(node: Node) -> None:
    before = node.saves()
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    node.ok("install", rules=attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True))
    for record in Path(node.state_dir, "attachments").iterdir():
        record.unlink()
    assert node.ok("gc", network="n1", valid=[["c2", "eth0"]]) == []
    v4, v6 = node.saves()
    assert "id=c1 " not in v4 + v6
    assert "id=c2 " in v4 and "id=c2 " in v6  # valid: kept, record or not
    assert node.ok("gc", network="n1", valid=[]) == []
    assert node.saves() == before


def test_port_conflicts_name_the_holder_and_change_nothing(node: Node) -> None:
    node.ok("install", rules=attachment("c1", portMappings=PORTS[:1]))
    before = node.saves()
    records = node.records()
    error = node.error("install", rules=attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True,
                                                   portMappings=[{"hostPort": 8080, "containerPort": 81}]))
    assert error["code"] == 110
    assert "c1" in error["msg"] and "eth0" in error["msg"] and "8080/tcp" in error["msg"]
    assert node.saves() == before
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


@pytest.mark.skipif(shutil.which("conntrack") is None, reason="needs the conntrack CLI to create entries")
def test_flush_udp_conntrack_deletes_only_matching_entries(node: Node) -> None:
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


def test_concurrent_adds_and_dels_keep_shared_chains_consistent(node: Node) -> None:
    before = node.saves()
    docs = [attachment(f"c{i}", f"10.1.0.{10 + i}", f"fd00::{10 + i:x}", ip_masq=True,
                       portMappings=[{"hostPort": 8000 + i, "containerPort": 80}]) for i in range(8)]
    assert all("ok" in a for a in node.call_parallel("install", [{"rules": d} for d in docs]))
    v4, v6 = node.saves()
    for saved in (v4, v6):
        assert saved.count(":CNIBR-HOSTPORT-DNAT ") == 1
        assert saved.count("shared=forward") == 1 and saved.count("shared=masq-mark:13") == 1
    for doc in docs:
        node.ok("check", rules=doc)
    removals = [{"network": "n1", "container_id": d["container_id"]} for d in docs]
    assert all("ok" in a for a in node.call_parallel("remove", removals))
    assert node.saves() == before
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
        assert "CNIBR" not in "".join(other.saves())
        assert other.records() == []
