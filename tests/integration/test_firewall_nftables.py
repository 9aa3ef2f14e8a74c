"""The nftables driver against the real kernel, inside throwaway namespaces: what is particular
to it (test_firewall_drivers.py has what every backend does alike).

The table as nft lists it, a transaction refused whole, elements deleted by hand, CHECK naming
what is missing, isolation and internal networks as elements, comments nft cannot print as
they are; the accepts written into an iptables FORWARD chain whose policy is DROP (both
flavours); and an iptables attachment next to an nftables one on the same bridge.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import nstools
from tests.firewall_node import NFTABLES, PORTS, Node, NodeFactory, attachment, node_of  # noqa: F401

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nstools.have_privileges(), reason="needs root and iproute2"),
]

C1 = "cni-bridge net=n1 id=c1 if=eth0"


@pytest.fixture
def node(node_of: NodeFactory) -> Node:  # noqa: F811
    return node_of(NFTABLES)


def listing(node: Node) -> dict[str, Any]:
    """Our table from ``nft -j``: {"sets": {name: [element json]}, "chains": {name: chain json},
    "rules": {chain: [comment]}}."""
    objects = json.loads(node.nft("-j", "list", "table", "inet", "cni-bridge"))["nftables"]
    out: dict[str, Any] = {"sets": {}, "chains": {}, "rules": {}}
    for obj in objects:
        for kind in ("set", "map"):
            if kind in obj:
                out["sets"][obj[kind]["name"]] = obj[kind].get("elem", [])
        if "chain" in obj:
            out["chains"][obj["chain"]["name"]] = obj["chain"]
        if "rule" in obj:
            out["rules"].setdefault(obj["rule"]["chain"], []).append(obj["rule"].get("comment"))
    return out


def comments(elements: list[Any]) -> list[str]:
    found = []
    for element in elements:
        element = element[0] if isinstance(element, list) else element
        found.append(element["elem"]["comment"] if isinstance(element, dict) and "elem" in element else "")
    return found


def test_one_table_of_base_chains_and_sets_whose_elements_are_the_attachment(node: Node) -> None:
    before = node.snapshot()
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    table = listing(node)
    hooks = {name: (c.get("type"), c.get("hook"), c.get("prio")) for name, c in table["chains"].items() if "hook" in c}
    assert hooks == {"raw-prerouting": ("filter", "prerouting", -300), "nat-prerouting": ("nat", "prerouting", -100),
                     "nat-output": ("nat", "output", -100), "nat-postrouting": ("nat", "postrouting", 100),
                     "filter-forward": ("filter", "forward", 0)}
    for name in ("masq4", "masq6", "dnat4any_addr", "dnat4any_port", "dnat6any_addr", "dnat6any_port", "hairpin4",
                 "hairpin6"):
        assert table["sets"][name] and set(comments(table["sets"][name])) == {C1}, name
    assert comments(table["sets"]["bridges"]) == ["cni-bridge shared=bridge:cnibr0"]
    assert all(set(c) == {f"cni-bridge shared={key}"} for key, c in (
        ("hostport", table["rules"]["hostports"]), ("postrouting", table["rules"]["nat-postrouting"]),
        ("forward", table["rules"]["filter-forward"]), ("localhost-guard", table["rules"]["raw-prerouting"])))
    # Nothing outside our table: no iptables rule (the FORWARD policy accepts), the foreign table as it was.
    assert "cni-bridge" not in "".join(node.saves())
    assert "table inet foreign" in node.nft("list", "tables")
    node.ok("remove", network="n1", container_id="c1")
    assert node.table() == ""
    assert node.snapshot() == before


def test_a_second_attachment_adds_elements_and_no_rule(node: Node) -> None:
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    first = listing(node)
    node.ok("install", rules=attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True,
                                        portMappings=[{"hostPort": 8081, "containerPort": 80}]))
    second = listing(node)
    assert second["rules"] == first["rules"] and second["chains"].keys() == first["chains"].keys()
    assert len(second["sets"]["masq4"]) == 2 and len(second["sets"]["dnat4any_port"]) == 3
    assert second["sets"]["bridges"] == first["sets"]["bridges"]  # shared: once
    node.ok("remove", network="n1", container_id="c1")
    assert "id=c1 " not in node.table() and "id=c2 " in node.table()
    node.ok("remove", network="n1", container_id="c2")
    assert node.table() == ""


def test_a_refused_transaction_changes_nothing(node: Node) -> None:
    node.ok("install", rules=attachment("c0", "10.1.0.9", None, portMappings=[{"hostPort": 7070, "containerPort": 80}]))
    # A leftover of an attachment whose records are gone holds c1's masquerade key.
    node.nft("add", "element", "inet", "cni-bridge", "masq4", '{ "cnibr0" . 10.1.0.2 : accept }')
    before, records = node.snapshot(), node.records()
    error = node.error("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    assert error["code"] == 109 and "exists" in error["details"], error
    assert node.snapshot() == before
    assert node.records() == records


def test_remove_copes_with_elements_and_rules_deleted_by_hand(node: Node) -> None:
    before = node.snapshot()
    node.ok("install", rules=attachment("c1", ip_masq=True, portMappings=PORTS))
    node.nft("delete", "element", "inet", "cni-bridge", "masq4", '{ "cnibr0" . 10.1.0.2 }')
    node.nft("flush", "chain", "inet", "cni-bridge", "filter-forward")
    node.ok("remove", network="n1", container_id="c1")
    assert node.snapshot() == before
    assert node.records() == []


def test_check_names_what_is_missing(node: Node) -> None:
    doc = attachment("c1", ip_masq=True, portMappings=PORTS)
    node.ok("install", rules=doc)
    node.ok("check", rules=doc)
    node.nft("delete", "element", "inet", "cni-bridge", "dnat6any_port", "{ udp . 5353 }")
    error = node.error("check", rules=doc)
    assert error["code"] == 108 and error["msg"] == (
        "firewall rule missing: inet element udp . 5353 : 53 in dnat6any_port (run `cni-bridge restore`)"), error
    node.ok("remove", network="n1", container_id="c1")
    node.ok("install", rules=doc)
    node.nft("flush", "chain", "inet", "cni-bridge", "nat-output")
    error = node.error("check", rules=doc)
    assert error["code"] == 108 and error["msg"].endswith("chain nat-output (run `cni-bridge restore`)"), error


def test_isolated_and_internal_networks_are_elements(node: Node) -> None:
    before = node.snapshot()
    iso = attachment("c1", bridge="br-iso", network="iso", isolate=True, ip_masq=True,
                     portMappings=[{"hostPort": 8080, "containerPort": 80}])
    internal = attachment("c2", "10.2.0.2", None, bridge="br-int", network="int", internal=True)
    plain = attachment("c3", "10.3.0.2", None, bridge="br-plain", network="plain")
    for doc in (iso, internal, plain):
        node.ok("install", rules=doc)
    sets = listing(node)["sets"]
    names = {name: sorted(e["elem"]["val"] if isinstance(e, dict) else e for e in elements)
             for name, elements in sets.items() if name in ("bridges", "isolated", "internal")}
    assert names == {"bridges": ["br-iso", "br-plain"], "isolated": ["br-iso"], "internal": ["br-int"]}
    assert "net=int " not in node.table()  # internal: nothing of its own, no masquerade
    assert node.error("install", rules=dict(internal, portMappings=PORTS))["code"] == 7
    for doc in (iso, internal, plain):
        node.ok("remove", network=doc["network"], container_id=doc["container_id"])
    assert node.snapshot() == before


def test_a_comment_nft_cannot_print_as_it_is_still_names_the_attachment(node: Node) -> None:
    before = node.snapshot()
    odd = dict(attachment("c1", ip_masq=True, portMappings=PORTS[:1]), ifname="e\"t'h\\")
    long = attachment("c" * 64, "10.1.0.3", None, network="n" * 60, ip_masq=True)
    for doc in (odd, long):
        node.ok("install", rules=doc)
        node.ok("check", rules=doc)
    assert "cni-bridge key=" in node.table() and '\\"' not in node.table()
    assert json.loads(node.nft("-j", "list", "ruleset"))  # still listed as valid JSON, and as text:
    node.nft_file(node.nft("list", "table", "inet", "cni-bridge").replace("table inet cni-bridge", "table inet copy"))
    node.nft("delete", "table", "inet", "copy")
    node.ok("remove", network="n1", container_id="c1", ifname="e\"t'h\\")
    node.ok("remove", network="n" * 60, container_id="c" * 64)
    assert node.snapshot() == before


# --- an iptables FORWARD chain whose policy is DROP -------------------------------------------


def accepts(node: Node, flavour: str, family: int) -> list[str]:
    return [line for line in node.save(family, flavour).splitlines() if "shared=nftables:" in line]


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_a_dropping_iptables_forward_chain_gets_our_accepts_and_loses_them_with_the_last_user(
        node: Node, flavour: str) -> None:
    for family in (4, 6):
        node.iptables(family, "-P", "FORWARD", "DROP", flavour=flavour)
    before = node.snapshot() + (node.save(4, flavour), node.save(6, flavour))
    a = attachment("c1", ip_masq=True, portMappings=PORTS)
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True)
    internal = attachment("c3", "10.2.0.2", None, bridge="br-int", network="int", internal=True)
    for doc in (a, b, internal):
        node.ok("install", rules=doc)
    c = '-m comment --comment "cni-bridge shared=nftables:{}"'
    expected = [f"-A FORWARD -i br-int -o br-int {c.format('internal:br-int')} -j ACCEPT",
                f"-A FORWARD -i cnibr0 {c.format('bridge:cnibr0')} -j ACCEPT",
                f"-A FORWARD -o cnibr0 {c.format('bridge:cnibr0')} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT "
                "-j ACCEPT"]
    assert accepts(node, flavour, 4) == expected  # at the top, once per bridge whatever the attachments
    assert accepts(node, flavour, 6) == expected
    other = "legacy" if flavour == "nft" else "nft"
    assert accepts(node, other, 4) == [] and accepts(node, other, 6) == [], "only where the policy drops"
    for doc in (a, b, internal):
        node.ok("check", rules=doc)
    # Deleted by hand: CHECK says where.
    node.iptables(6, "-D", "FORWARD", "-i", "cnibr0", "-m", "comment", "--comment", "cni-bridge shared=nftables:bridge:cnibr0",
                  "-j", "ACCEPT", flavour=flavour)
    error = node.error("check", rules=b)
    assert error["code"] == 108 and f"iptables-{flavour} (IPv6) filter: -A FORWARD -i cnibr0" in error["msg"], error
    for doc in (a, internal, b):
        node.ok("remove", network=doc["network"], container_id=doc["container_id"])
    assert node.snapshot() + (node.save(4, flavour), node.save(6, flavour)) == before


def test_no_accepts_where_the_forward_policy_accepts(node: Node) -> None:
    node.ok("install", rules=attachment("c1", ip_masq=True))
    for flavour in ("nft", "legacy"):
        assert accepts(node, flavour, 4) == [] and accepts(node, flavour, 6) == []


# --- both backends on one host ---------------------------------------------------------------


def test_an_iptables_and_an_nftables_attachment_on_one_bridge(node_of: NodeFactory) -> None:  # noqa: F811
    nft, ipt = node_of(NFTABLES), node_of("nft")  # one namespace, one state directory

    def state() -> tuple[Any, ...]:
        # iptables-save's view, not nft's: the iptables driver's rule in nat OUTPUT makes
        # iptables-nft create that built-in chain, which it leaves when the rule goes.
        return ipt.saves(), nft.table(), nft.nft("-s", "list", "table", "inet", "foreign")

    before = state()
    a = attachment("c1", ip_masq=True, portMappings=PORTS)
    b = attachment("c2", "10.1.0.3", "fd00::3", ip_masq=True, portMappings=[{"hostPort": 8081, "containerPort": 80}])
    ipt.ok("install", rules=a)
    nft.ok("install", rules=b)
    ipt.ok("check", rules=a)
    nft.ok("check", rules=b)
    assert "id=c1 " in ipt.ours() and "id=c1 " not in nft.table()
    assert "id=c2 " in nft.table() and "id=c2 " not in ipt.ours()
    # Host ports are one namespace for both.
    error = nft.error("install", rules=attachment("c3", "10.1.0.4", None, portMappings=PORTS[:1]))
    assert error["code"] == 110 and "c1" in error["msg"]
    error = ipt.error("install", rules=attachment("c3", "10.1.0.4", None, portMappings=[
        {"hostPort": 8081, "containerPort": 80}]))
    assert error["code"] == 110 and "c2" in error["msg"]
    # Each removal takes only its own, whichever backend asks (the record names the driver).
    nft.ok("remove", network="n1", container_id="c1")
    assert "id=c1 " not in ipt.ours() and "CNIBR" not in ipt.ours()
    nft.ok("check", rules=b)
    ipt.ok("remove", network="n1", container_id="c2")
    assert state() == before
    assert nft.records() == []
    # GC of the network takes both.
    ipt.ok("install", rules=a)
    nft.ok("install", rules=b)
    assert nft.ok("gc", network="n1", valid=[], sweep=[NFTABLES]) == []
    assert state() == before
    assert nft.records() == []
