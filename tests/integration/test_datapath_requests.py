"""Requested IPs and MACs from every source, and range exhaustion, against real namespaces."""

from __future__ import annotations

from typing import Any

import pytest

from tests.plugin import (  # noqa: F401
    Node,
    host_local,
    netconf,
    node,
    requires_plugin,
    reservations,
    store_files,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.203.0.0/24"
V6 = "fd00:203::/64"


def dual(node: Node, **extra: Any) -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4, V6),
                   isGateway=True, **extra)


def addresses(result: dict[str, Any]) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def test_requested_ips_from_cni_args(node: Node) -> None:
    conf = dual(node)
    c = node.add_container()
    result = node.add(conf, "req-env", c, cni_args="IgnoreUnknown=1;IP=10.203.0.50,fd00:203::50")
    assert addresses(result) == ["10.203.0.50/24", "fd00:203::50/64"]
    assert sorted(node.addrs("eth0", c)) == ["10.203.0.50/24", "fd00:203::50/64"]
    data_dir, net = conf["ipam"]["dataDir"], conf["name"]
    assert reservations(data_dir, net) == {"10.203.0.50": "req-env\r\neth0", "fd00:203::50": "req-env\r\neth0"}
    assert node.ping(c, "10.203.0.1")


def test_requested_ip_from_args_cni_ips(node: Node) -> None:
    conf = dual(node, args={"cni": {"ips": ["10.203.0.51"]}})
    c = node.add_container()
    result = node.add(conf, "req-args", c)
    assert addresses(result) == ["10.203.0.51/24", "fd00:203::2/64"]
    assert "10.203.0.51/24" in node.addrs("eth0", c)


def test_requested_ip_from_runtime_config(node: Node) -> None:
    conf = dual(node, runtimeConfig={"ips": ["10.203.0.52/24", "fd00:203::52/64"]})
    c = node.add_container()
    result = node.add(conf, "req-rt", c)
    assert addresses(result) == ["10.203.0.52/24", "fd00:203::52/64"]
    assert sorted(node.addrs("eth0", c)) == ["10.203.0.52/24", "fd00:203::52/64"]


def test_runtime_config_ips_win_over_args_and_cni_args(node: Node) -> None:
    conf = dual(node, runtimeConfig={"ips": ["10.203.0.53"]}, args={"cni": {"ips": ["10.203.0.54"]}})
    c1 = node.add_container()
    result = node.add(conf, "req-prec", c1, cni_args="IP=10.203.0.55")
    assert addresses(result)[0] == "10.203.0.53/24"
    assert "10.203.0.53/24" in node.addrs("eth0", c1)
    # args.cni.ips win over CNI_ARGS when runtimeConfig has none.
    conf2 = dict(conf)
    del conf2["runtimeConfig"]
    c2 = node.add_container()
    result2 = node.add(conf2, "req-prec2", c2, cni_args="IP=10.203.0.55")
    assert addresses(result2)[0] == "10.203.0.54/24"
    held = set(reservations(conf["ipam"]["dataDir"], conf["name"]))
    assert {"10.203.0.53", "10.203.0.54"} <= held and "10.203.0.55" not in held


def test_requested_ip_taken_fails_and_leaves_nothing(node: Node) -> None:
    conf = dual(node)
    data_dir, net = conf["ipam"]["dataDir"], conf["name"]
    c1, c2 = node.add_container(), node.add_container()
    node.add(conf, "owner", c1, cni_args="IP=10.203.0.60")
    files_before = store_files(data_dir, net)
    held_before = reservations(data_dir, net)
    veths_before = node.veths()

    r = node.run("ADD", conf, "thief", c2.path, cni_args="IP=10.203.0.60")
    assert r.rc != 0 and r.code == 105, r
    assert "10.203.0.60" in r.out["msg"] and "not available" in r.out["msg"], r
    assert node.veths() == veths_before
    assert node.link("eth0", c2) is None
    assert reservations(data_dir, net) == held_before  # no v6 address kept for "thief"
    assert store_files(data_dir, net) == files_before
    # The owner is untouched and still reachable.
    assert node.addrs("eth0", c1)[0] == "10.203.0.60/24"
    assert node.ping(c1, "10.203.0.1")


@pytest.mark.parametrize("source", ["runtimeConfig", "args", "CNI_ARGS"])
def test_mac_from_each_source_is_applied(node: Node, source: str) -> None:
    mac = "0a:58:0a:cb:00:42"
    extra: dict[str, Any] = {}
    cni_args = None
    if source == "runtimeConfig":
        extra["runtimeConfig"] = {"mac": mac}
    elif source == "args":
        extra["args"] = {"cni": {"mac": mac}}
    else:
        cni_args = f"MAC={mac.upper()}"
    conf = dual(node, **extra)
    c = node.add_container()
    result = node.add(conf, f"mac-{source.lower()}", c, cni_args=cni_args)
    assert node.existing_link("eth0", c)["address"] == mac
    assert result["interfaces"][2]["mac"] == mac
    assert node.ping(c, "10.203.0.1")


def test_mac_precedence_runtime_config_then_args_then_cni_args(node: Node) -> None:
    conf = dual(node, runtimeConfig={"mac": "0a:58:00:00:00:01"}, args={"cni": {"mac": "0a:58:00:00:00:02"}})
    c1 = node.add_container()
    node.add(conf, "macp-1", c1, cni_args="MAC=0a:58:00:00:00:03")
    assert node.existing_link("eth0", c1)["address"] == "0a:58:00:00:00:01"
    conf2 = dict(conf)
    del conf2["runtimeConfig"]
    c2 = node.add_container()
    node.add(conf2, "macp-2", c2, cni_args="MAC=0a:58:00:00:00:03")
    assert node.existing_link("eth0", c2)["address"] == "0a:58:00:00:00:02"


def test_exhausted_range_fails_with_104_and_leaves_nothing(node: Node) -> None:
    # A /30 has one address besides the gateway; a /29 cut to .2-.3 has exactly two.
    data_dir = node.data_dir()
    rng = [{"subnet": "10.203.9.0/29", "rangeStart": "10.203.9.2", "rangeEnd": "10.203.9.3",
            "gateway": "10.203.9.1"}]
    conf = netconf(node.net_name(), node.bridge_name(), host_local(data_dir, rng), isGateway=True)
    net = conf["name"]
    c1, c2, c3 = node.add_container(), node.add_container(), node.add_container()
    assert addresses(node.add(conf, "full-1", c1)) == ["10.203.9.2/29"]
    assert addresses(node.add(conf, "full-2", c2)) == ["10.203.9.3/29"]
    files_before = store_files(data_dir, net)
    veths_before = sorted(node.veths())

    r = node.run("ADD", conf, "full-3", c3.path)
    assert r.rc != 0 and r.code == 104, r
    assert "10.203.9.2-10.203.9.3" in r.out["msg"], r
    assert "no IP addresses available" in r.out["msg"], r
    assert sorted(node.veths()) == veths_before
    assert node.link_names(c3) == {"lo"}
    assert store_files(data_dir, net) == files_before
    assert set(reservations(data_dir, net)) == {"10.203.9.2", "10.203.9.3"}


def test_slash_30_holds_one_container(node: Node) -> None:
    data_dir = node.data_dir()
    conf = netconf(node.net_name(), node.bridge_name(), host_local(data_dir, "10.203.8.0/30"), isGateway=True)
    c1, c2 = node.add_container(), node.add_container()
    assert addresses(node.add(conf, "s30-1", c1)) == ["10.203.8.2/30"]
    assert node.ping(c1, "10.203.8.1")
    r = node.run("ADD", conf, "s30-2", c2.path)
    assert r.code == 104 and "10.203.8.1-10.203.8.2" in r.out["msg"], r
    assert len(node.veths()) == 1
    assert list(reservations(data_dir, conf["name"])) == ["10.203.8.2"]
