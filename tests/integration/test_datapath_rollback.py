"""A failure in the middle of ADD takes back everything that ADD did.

Each test provokes one failure at a different step of ADD and then checks the node,
the container and the IPAM store for leftovers.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests import nstools
from tests.plugin import (  # noqa: F401
    Node,
    assert_bridge_unused,
    host_local,
    netconf,
    node,
    requires_plugin,
    reservations,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.205.0.0/24"
V6 = "fd00:205::/64"


def conf_for(node: Node, bridge: str | None = None, **ipam_extra: Any) -> dict[str, Any]:
    return netconf(node.net_name(), bridge or node.bridge_name(),
                   host_local(node.data_dir(), V4, V6, **ipam_extra), isGateway=True, isDefaultGateway=True)


def no_reservation(conf: dict[str, Any]) -> None:
    held = reservations(conf["ipam"]["dataDir"], conf["name"])
    assert held == {}, f"reservations left behind: {held}"


def test_conflicting_bridge_address_rolls_back(node: Node) -> None:
    bridge = node.bridge_name()
    node.sh("ip", "link", "add", bridge, "type", "bridge")
    node.sh("ip", "addr", "add", "10.205.0.99/24", "dev", bridge)
    conf = conf_for(node, bridge)
    c = node.add_container()

    r = node.run("ADD", conf, "rb-gw", c.path)
    assert r.rc != 0 and r.code == 102, r
    assert "10.205.0.1/24" in r.out["msg"] and bridge in r.out["msg"], r
    assert node.veths() == []
    assert node.link_names(c) == {"lo"}
    no_reservation(conf)
    # The pre-existing bridge is kept with exactly its own address; no gateway of ours on it.
    assert node.link(bridge) is not None
    assert node.addrs(bridge) == ["10.205.0.99/24"]


def test_unreachable_route_gateway_rolls_back(node: Node) -> None:
    conf = conf_for(node, routes=[{"dst": "192.0.2.0/24", "gw": "10.250.9.9"}])
    c = node.add_container()

    r = node.run("ADD", conf, "rb-route", c.path)
    assert r.rc != 0 and r.code == 101, r
    assert "192.0.2.0/24" in r.out["msg"] and "10.250.9.9" in r.out["msg"], r
    assert node.veths() == []
    assert node.link_names(c) == {"lo"}
    no_reservation(conf)
    assert_bridge_unused(node, conf["bridge"], gateways=("10.205.0.1/24", "fd00:205::1/64"))


def test_unreachable_route_gateway_keeps_existing_bridge_and_its_gateway(node: Node) -> None:
    good = conf_for(node)
    c1, c2 = node.add_container(), node.add_container()
    node.add(good, "rb-first", c1)
    bad = dict(good)
    bad["ipam"] = dict(good["ipam"], routes=[{"dst": "192.0.2.0/24", "gw": "10.250.9.9"}])
    r = node.run("ADD", bad, "rb-second", c2.path)
    assert r.code == 101, r
    assert len(node.veths()) == 1
    assert node.link_names(c2) == {"lo"}
    assert set(reservations(good["ipam"]["dataDir"], good["name"])) == {"10.205.0.2", "fd00:205::2"}
    # The first attachment still has its bridge, its gateway and its traffic.
    assert sorted(node.addrs(good["bridge"])) == ["10.205.0.1/24", "fd00:205::1/64"]
    assert node.ping(c1, "10.205.0.1") and node.ping(c1, "fd00:205::1")


def test_bridge_name_taken_by_another_link_kind(node: Node) -> None:
    bridge = node.bridge_name()
    link_kind = node.add_plain_link(bridge)
    before = node.existing_link(bridge)
    conf = conf_for(node, bridge)
    c = node.add_container()

    r = node.run("ADD", conf, "rb-notbridge", c.path)
    assert r.rc != 0 and r.code == 102, r
    assert "is not a bridge" in r.out["msg"] and bridge in r.out["msg"], r
    assert node.veths() == []
    assert node.link_names(c) == {"lo"}
    no_reservation(conf)
    after = node.link(bridge)
    assert after is not None and after["linkinfo"]["info_kind"] == link_kind
    assert after["ifindex"] == before["ifindex"] and node.addrs(bridge) == []


def test_ifname_already_in_container(node: Node) -> None:
    conf = conf_for(node)
    c = node.add_container()
    link_kind = node.add_plain_link("eth0", c)
    nstools.run_in_netns(c.name, "ip", "addr", "add", "198.51.100.7/24", "dev", "eth0")
    before = node.existing_link("eth0", c)

    r = node.run("ADD", conf, "rb-exists", c.path)
    assert r.rc != 0 and r.code == 103, r
    assert '"eth0"' in r.out["msg"] and "already exists" in r.out["msg"], r
    after = node.link("eth0", c)
    assert after is not None and after["ifindex"] == before["ifindex"]
    assert after["linkinfo"]["info_kind"] == link_kind and after["flags"] == before["flags"]
    assert node.addrs("eth0", c) == ["198.51.100.7/24"]
    assert node.link_names(c) == {"lo", "eth0"}
    assert node.link_names() == {"lo"}  # no veth, no bridge: the check comes first
    no_reservation(conf)


def test_missing_netns_creates_nothing(node: Node) -> None:
    conf = conf_for(node)
    r = node.run("ADD", conf, "rb-nons", "/run/netns/cbt-does-not-exist")
    assert r.rc != 0 and r.code == 100, r
    assert "cbt-does-not-exist" in r.out["msg"], r
    assert node.link_names() == {"lo"}
    assert not os.path.exists(os.path.join(conf["ipam"]["dataDir"], conf["name"]))


def test_conflict_on_second_family_takes_back_the_first_gateway(node: Node) -> None:
    # The IPv4 gateway goes on the bridge first; the IPv6 one then conflicts.
    bridge = node.bridge_name()
    node.sh("ip", "link", "add", bridge, "type", "bridge")
    node.sh("ip", "addr", "add", "fd00:205::99/64", "dev", bridge, "nodad")
    conf = conf_for(node, bridge)
    c = node.add_container()

    r = node.run("ADD", conf, "rb-gw6", c.path)
    assert r.rc != 0 and r.code == 102 and "fd00:205::1/64" in r.out["msg"], r
    assert node.veths() == []
    assert node.link_names(c) == {"lo"}
    no_reservation(conf)
    assert node.addrs(bridge) == ["fd00:205::99/64"]  # 10.205.0.1/24 taken back

