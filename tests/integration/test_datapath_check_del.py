"""CHECK against real state that drifted from prevResult; DEL in every state of the attachment."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests import nstools
from tests.plugin import (  # noqa: F401
    Node,
    host_local,
    netconf,
    node,
    requires_plugin,
    reservations,
    with_prev,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.204.0.0/24"
V6 = "fd00:204::/64"


def dual(node: Node, version: str = "1.1.0") -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4, V6), version,
                   isGateway=True, isDefaultGateway=True)


def assert_nothing_left(node: Node, conf: dict[str, Any]) -> None:
    """Only lo and the bridge remain in the node; no reservation in the store."""
    assert node.link_names() == {"lo", conf["bridge"]}, node.link_names()
    assert reservations(conf["ipam"]["dataDir"], conf["name"]) == {}


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_check_passes_right_after_add(node: Node, version: str) -> None:
    conf = dual(node, version)
    c = node.add_container()
    result = node.add(conf, "chk-ok", c)
    r = node.ok("CHECK", with_prev(conf, result), "chk-ok", c.path)
    assert r.out is None and r.stdout.strip() == "", r  # CHECK prints nothing on success


def test_check_fails_after_container_address_removed(node: Node) -> None:
    conf = dual(node, "1.0.0")
    c = node.add_container()
    result = node.add(conf, "chk-addr", c)
    nstools.run_in_netns(c.name, "ip", "addr", "del", "10.204.0.2/24", "dev", "eth0")
    r = node.run("CHECK", with_prev(conf, result), "chk-addr", c.path)
    assert r.rc != 0 and r.code == 108, r
    assert "10.204.0.2/24" in r.out["msg"] and "missing" in r.out["msg"] and "eth0" in r.out["msg"], r


def test_check_fails_after_gateway_address_removed_from_bridge(node: Node) -> None:
    conf = dual(node, "1.0.0")
    c = node.add_container()
    result = node.add(conf, "chk-gw", c)
    node.sh("ip", "addr", "del", "fd00:204::1/64", "dev", conf["bridge"])
    r = node.run("CHECK", with_prev(conf, result), "chk-gw", c.path)
    assert r.code == 108 and "fd00:204::1/64" in r.out["msg"], r


def test_check_fails_after_route_removed(node: Node) -> None:
    conf = dual(node, "1.0.0")
    c = node.add_container()
    result = node.add(conf, "chk-rt", c)
    nstools.run_in_netns(c.name, "ip", "-6", "route", "del", "default")
    r = node.run("CHECK", with_prev(conf, result), "chk-rt", c.path)
    assert r.code == 108 and "::/0" in r.out["msg"], r


def test_check_fails_after_host_veth_deleted_then_del_cleans_up(node: Node) -> None:
    conf = dual(node, "1.0.0")
    c = node.add_container()
    result = node.add(conf, "chk-veth", c)
    host_veth = result["interfaces"][1]["name"]
    node.sh("ip", "link", "del", host_veth)
    r = node.run("CHECK", with_prev(conf, result), "chk-veth", c.path)
    assert r.rc != 0 and r.code == 108, r
    assert host_veth in r.out["msg"] and "does not exist" in r.out["msg"], r

    node.ok("DEL", conf, "chk-veth", c.path)
    assert_nothing_left(node, conf)
    assert node.link_names(c) == {"lo"}


def test_check_without_prev_result_is_an_error(node: Node) -> None:
    conf = dual(node, "1.0.0")
    c = node.add_container()
    node.add(conf, "chk-noprev", c)
    r = node.run("CHECK", conf, "chk-noprev", c.path)
    assert r.rc != 0 and r.code == 7 and "prevResult" in r.out["msg"], r


def test_check_on_l2_only_network(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), None, "1.0.0")
    c = node.add_container()
    result = node.add(conf, "chk-l2", c)
    node.ok("CHECK", with_prev(conf, result), "chk-l2", c.path)
    # And it still notices a missing container interface.
    nstools.run_in_netns(c.name, "ip", "link", "del", "eth0")
    r = node.run("CHECK", with_prev(conf, result), "chk-l2", c.path)
    assert r.code == 108, r


# --- DEL ------------------------------------------------------------------------


def test_del_twice(node: Node) -> None:
    conf = dual(node)
    c = node.add_container()
    node.add(conf, "del-twice", c)
    assert reservations(conf["ipam"]["dataDir"], conf["name"])
    node.ok("DEL", conf, "del-twice", c.path)
    assert_nothing_left(node, conf)
    assert node.link_names(c) == {"lo"}
    node.ok("DEL", conf, "del-twice", c.path)
    assert_nothing_left(node, conf)


def test_del_after_container_netns_deleted(node: Node) -> None:
    conf = dual(node)
    c = node.add_container()
    node.add(conf, "del-gone", c)
    nstools.delete_netns(c.name)
    node.ok("DEL", conf, "del-gone", c.path)  # the path no longer exists
    assert_nothing_left(node, conf)


def test_del_with_empty_netns(node: Node) -> None:
    conf = dual(node)
    c1, c2 = node.add_container(), node.add_container()
    node.add(conf, "del-nons", c1)
    node.add(conf, "del-other", c2)
    node.ok("DEL", conf, "del-nons", "")
    # The host veth is found by its derived name: gone, and its container end with it.
    assert len(node.veths()) == 1
    assert node.link_names(c1) == {"lo"}
    assert set(reservations(conf["ipam"]["dataDir"], conf["name"])) == {"10.204.0.3", "fd00:204::3"}
    # The other attachment is untouched and still works.
    assert node.ping(c2, "10.204.0.1")
    node.ok("DEL", conf, "del-other", "")
    assert_nothing_left(node, conf)


def test_del_of_unknown_attachment_succeeds_and_creates_nothing(node: Node) -> None:
    conf = dual(node)
    c = node.add_container()
    node.ok("DEL", conf, "never-added", c.path)
    assert node.link_names() == {"lo"}
    assert node.link_names(c) == {"lo"}
    assert not os.path.exists(os.path.join(conf["ipam"]["dataDir"], conf["name"]))
