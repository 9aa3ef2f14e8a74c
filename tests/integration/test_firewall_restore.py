"""``cni-bridge restore`` against the real kernel, on every backend (iptables-nft,
iptables-legacy, nftables), in throwaway namespaces (tests/firewall_node.py), on a node whose
FORWARD policy drops (so the nftables backend has accepts in iptables' FORWARD chain too).

Each way a reload takes our rules (``iptables -F FORWARD``, ``iptables -t nat -F``, ``nft
flush ruleset``, an ``iptables-restore`` of a file saved without them): restore puts back
exactly the rules there were, in their order, leaves others' rules alone, and a second run
changes nothing. What cannot be restored is named with its reason and a non-zero exit. An ADD
after a flush does not build on the missing shared rules. Traffic through restored rules is in
test_firewall_restore_traffic.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import nstools
from tests.reloads import FLUSHES, reload_firewall
from tests.firewall_node import BACKENDS, IPTABLES, PORTS, REPO, Node, NodeFactory, attachment, node_of  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nstools.have_privileges(), reason="needs root and iproute2"),
]



@pytest.fixture(params=BACKENDS)
def node(request: pytest.FixtureRequest, node_of: NodeFactory) -> Node:  # noqa: F811
    n = node_of(request.param)
    for family in (4, 6):
        n.iptables(family, "-P", "FORWARD", "DROP")
    return n


def mine(node: Node) -> list[str]:
    """Our rules wherever they are, in order: both iptables flavours' lines of ours (chains,
    rules, the nftables backend's accepts in FORWARD) and our nftables table."""
    lines = [line for family in (4, 6) for flavour in IPTABLES for line in node.save(family, flavour).splitlines()
             if "CNIBR" in line or "cni-bridge" in line]
    return lines + node.table().splitlines()


def install_three(node: Node) -> list[dict[str, object]]:
    docs = [attachment("c1", ip_masq=True, portMappings=PORTS),
            attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True,
                       portMappings=[{"hostPort": 8081, "containerPort": 80}]),
            attachment("c3", "10.2.0.3", None, network="n2", bridge="cnibr1", ip_masq=True, isolate=True)]
    for doc in docs:
        node.ok("install", rules=doc)
    return docs


def flush(node: Node, how: str, saved: tuple[str, str]) -> None:
    """Take our rules as a reload does; `saved` is the node's iptables before our rules."""
    reload_firewall(node.ns, node.flavour, how, saved)


def comparable(node: Node) -> tuple[str, ...]:
    """The node's firewall as iptables-save (both flavours) and nft list each table show it:
    with the nftables backend the node's iptables-nft tables are compared as iptables-save
    prints them, since an iptables-nft-restore also creates the built-in chains it lists."""
    if not node.nftables:
        return node.snapshot()
    foreign = node.nft("-s", "list", "table", "inet", "foreign")
    return (*node.saves(), node.save(4, "legacy"), node.save(6, "legacy"), node.table(), foreign)


def restored(node: Node, *extra: str) -> str:
    done = node.restore(*extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("how", FLUSHES)
def test_restore_puts_back_exactly_what_a_flush_took(node: Node, how: str) -> None:
    saved = node.saves()
    docs = install_three(node)
    before, ours = comparable(node), mine(node)
    flush(node, how, saved)
    flushed = mine(node)
    out = restored(node)
    assert mine(node) == ours, out
    if how == "iptables-restore without ours":
        assert comparable(node) == before  # others' rules too: the file held them
    for doc in docs:
        node.ok("check", rules=doc)
    if flushed != ours:
        assert "restored" in out, out
    again = node.snapshot()
    out = restored(node)
    assert "restored" not in out and "nothing missing" in out, out
    assert node.snapshot() == again


def test_restore_never_touches_or_repeats_others_rules(node: Node) -> None:
    install_three(node)
    ours = mine(node)
    flush(node, "iptables -t nat -F", ("", ""))
    flush(node, "iptables -F FORWARD", ("", ""))
    foreign = ["-A FORWARD -i eth9 -j ACCEPT", "-A POSTROUTING -o eth9 -j MASQUERADE"]
    node.iptables(4, "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT")
    node.iptables(4, "-t", "nat", "-A", "POSTROUTING", "-o", "eth9", "-j", "MASQUERADE")
    restored(node)
    restored(node)
    assert mine(node) == ours
    text = node.save(4)
    assert [text.count(line + "\n") for line in foreign] == [1, 1], text


def test_restore_names_what_it_cannot_restore_and_restores_the_rest(node: Node) -> None:
    docs = install_three(node)
    record = Path(node.state_dir, "attachments")
    c2 = next(p for p in record.iterdir() if json.loads(p.read_text())["containerID"] == "c2")
    doc = json.loads(c2.read_text())
    doc["driver"] = "ebtables"  # a driver this version does not have
    c2.write_text(json.dumps(doc))
    node.nft("flush", "ruleset")
    flush(node, "iptables -t nat -F", ("", ""))
    done = node.restore()
    assert done.returncode == 1, done
    assert "container c2 ifname eth0 (network n1)" in done.stderr and "ebtables" in done.stderr, done.stderr
    assert "c1" not in done.stderr and "c3" not in done.stderr, done.stderr
    node.ok("check", rules=docs[0])
    node.ok("check", rules=docs[2])


@pytest.mark.parametrize("backend", IPTABLES)
def test_restore_names_an_attachment_whose_rules_the_kernel_refuses(node_of: NodeFactory,  # noqa: F811
                                                                   backend: str) -> None:
    # The chain externalSetMarkChain names is the admin's: a reload that deletes it leaves
    # the attachment's DNAT rules nothing to jump to.
    node = node_of(backend)
    for family in (4, 6):
        node.iptables(family, "-t", "nat", "-N", "ADMIN-MARK")
    plain = attachment("c1", ip_masq=True, portMappings=PORTS[:1])
    marked = attachment("c2", "10.1.0.3", "fd00::3", external_set_mark_chain="ADMIN-MARK",
                        portMappings=[{"hostPort": 8081, "containerPort": 80}])
    node.ok("install", rules=plain)
    node.ok("install", rules=marked)
    for family in (4, 6):
        node.iptables(family, "-t", "nat", "-F")
        node.iptables(family, "-t", "nat", "-X")
    done = node.restore()
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.startswith("  ") and not line.startswith("      ")]
    assert lines and all("container c2 ifname eth0 (network n1)" in line for line in lines), done.stderr
    assert "ADMIN-MARK" in done.stderr, done.stderr
    node.ok("check", rules=plain)


@pytest.mark.parametrize("how", FLUSHES)
def test_add_after_a_flush_rebuilds_the_shared_rules_it_needs(node: Node, how: str) -> None:
    saved = node.saves()
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    flush(node, how, saved)
    late = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    node.ok("install", rules=late)
    node.ok("check", rules=late)


def test_check_of_a_flushed_attachment_points_to_restore(node: Node) -> None:
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    node.nft("flush", "ruleset") if node.nftables else flush(node, "iptables -t nat -F", ("", ""))
    error = node.error("check", rules=doc)
    assert error["code"] == 108 and "cni-bridge restore" in error["msg"], error


def test_restore_usage(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cni_bridge", "restore", *args], capture_output=True, text=True,
                              cwd=REPO, check=False)
    done = run("--help")
    assert done.returncode == 0 and "--state-dir DIR" in done.stdout
    done = run("--bogus")
    assert done.returncode == 2 and "unknown argument '--bogus'" in done.stderr
    done = run("--state-dir")
    assert done.returncode == 2 and "--state-dir needs a directory" in done.stderr
    done = run("--state-dir", str(tmp_path / "none"))
    assert done.returncode == 0 and "nothing to restore" in done.stdout
    assert not (tmp_path / "none").exists()
