"""The dual-stack ADD result as each cniVersion renders it; L2-only with a legacy version."""

from __future__ import annotations

import os

import pytest

from tests.plugin import (  # noqa: F401
    ALL_VERSIONS,
    Node,
    assert_bridge_unused,
    host_local,
    netconf,
    node,
    requires_plugin,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.202.0.0/24"
V6 = "fd00:202::/64"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_dual_stack_result_in_every_version(node: Node, version: str) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4, V6), version,
                   isGateway=True, isDefaultGateway=True)
    c = node.add_container()
    result = node.add(conf, "ver-ctr", c)
    assert result["cniVersion"] == version
    # Whatever the rendering, the container really got both addresses.
    assert sorted(node.addrs("eth0", c)) == ["10.202.0.2/24", "fd00:202::2/64"]

    if version in ("0.1.0", "0.2.0"):
        assert set(result) <= {"cniVersion", "ip4", "ip6", "dns"}, result
        assert "interfaces" not in result and "ips" not in result
        assert result["ip4"]["ip"] == "10.202.0.2/24"
        assert result["ip4"]["gateway"] == "10.202.0.1"
        assert result["ip4"]["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.202.0.1"}]
        assert result["ip6"]["ip"] == "fd00:202::2/64"
        assert result["ip6"]["gateway"] == "fd00:202::1"
        assert result["ip6"]["routes"] == [{"dst": "::/0", "gw": "fd00:202::1"}]
        return

    assert "ip4" not in result and "ip6" not in result
    assert [i["name"] for i in result["interfaces"]] == [conf["bridge"], result["interfaces"][1]["name"], "eth0"]
    assert result["interfaces"][2]["sandbox"] == c.path
    has_mtu = version == "1.1.0"
    assert all(("mtu" in i) == has_mtu for i in result["interfaces"]), result["interfaces"]
    ips = result["ips"]
    assert [ip["address"] for ip in ips] == ["10.202.0.2/24", "fd00:202::2/64"]
    assert [ip["gateway"] for ip in ips] == ["10.202.0.1", "fd00:202::1"]
    assert [ip["interface"] for ip in ips] == [2, 2]
    if version in ("0.3.0", "0.3.1", "0.4.0"):
        assert [ip["version"] for ip in ips] == ["4", "6"]
    else:
        assert all("version" not in ip for ip in ips), ips
    assert sorted((r["dst"], r["gw"]) for r in result["routes"]) == [
        ("0.0.0.0/0", "10.202.0.1"), ("::/0", "fd00:202::1")]


def test_l2_only_with_version_0_2_0_fails_and_leaves_nothing(node: Node) -> None:
    name = node.net_name()
    conf = netconf(name, node.bridge_name(), None, "0.2.0")  # "ipam": {}
    c = node.add_container()
    r = node.run("ADD", conf, "l2-legacy", c.path)
    assert r.rc != 0, r
    assert r.out["cniVersion"] == "0.2.0"
    assert r.code == 113, r  # the result cannot be expressed in 0.2.0
    assert "no valid IP addresses" in r.out["msg"] and "0.2.0" in r.out["msg"], r
    # Nothing behind: no veth in the node, no interface in the container, no store.
    assert node.veths() == []
    assert node.link_names(c) == {"lo"}
    assert not os.path.exists(os.path.join("/var/lib/cni/networks", name))
    assert_bridge_unused(node, conf["bridge"])


def test_l2_only_with_version_0_3_0_has_interfaces_and_no_ips(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), None, "0.3.0")
    c = node.add_container()
    result = node.add(conf, "l2-030", c)
    assert result["ips"] == [] or "ips" not in result
    assert len(result["interfaces"]) == 3
    eth0 = node.link("eth0", c)
    assert eth0 is not None and "UP" in eth0["flags"]
    assert node.addrs("eth0", c) == []
