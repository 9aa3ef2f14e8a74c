"""Delegated IPAM: any ipam type but host-local is run from CNI_PATH.

Debian's reference plugins serve as delegates: ``static`` directly, and host-local
copied under another name (``hl-ref``), since "host-local" itself is built in.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.plugin import (  # noqa: F401
    REF_HOST_LOCAL,
    Node,
    netconf,
    node,
    requires_plugin,
    requires_reference,
    reservations,
    with_prev,
)

pytestmark = [pytest.mark.integration, requires_plugin, requires_reference]


def static_conf(node: Node, *addresses: dict[str, str], version: str = "1.0.0") -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), {"type": "static", "addresses": list(addresses)},
                   version, isGateway=True, isDefaultGateway=True)


def test_static_add_check_del(node: Node) -> None:
    conf = static_conf(node, {"address": "10.208.0.5/24", "gateway": "10.208.0.1"},
                       {"address": "fd00:208::5/64", "gateway": "fd00:208::1"})
    c = node.add_container()
    result = node.add(conf, "st-1", c)
    assert [(ip["address"], ip["gateway"], ip["interface"]) for ip in result["ips"]] == [
        ("10.208.0.5/24", "10.208.0.1", 2), ("fd00:208::5/64", "fd00:208::1", 2)]
    assert sorted((r["dst"], r["gw"]) for r in result["routes"]) == [
        ("0.0.0.0/0", "10.208.0.1"), ("::/0", "fd00:208::1")]
    assert sorted(node.addrs("eth0", c)) == ["10.208.0.5/24", "fd00:208::5/64"]
    assert sorted(node.addrs(conf["bridge"])) == ["10.208.0.1/24", "fd00:208::1/64"]
    assert node.ping(c, "10.208.0.1") and node.ping(c, "fd00:208::1")

    node.ok("CHECK", with_prev(conf, result), "st-1", c.path)
    node.ok("DEL", conf, "st-1", c.path)
    assert node.veths() == [] and node.link_names(c) == {"lo"}


def test_static_failure_is_propagated_and_leaves_nothing(node: Node) -> None:
    conf = static_conf(node, {"address": "10.208.0.500/24"})
    c = node.add_container()
    r = node.run("ADD", conf, "st-bad", c.path)
    assert r.rc != 0, r
    assert r.code is not None and (1 <= r.code < 100 or r.code == 107), r
    assert "static" in r.out["msg"] and "10.208.0.500/24" in r.msg, r
    assert node.link_names() == {"lo"}  # no bridge, no veth
    assert node.link_names(c) == {"lo"}


def test_missing_delegate_is_reported(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), {"type": "cbt-no-such-ipam"}, "1.0.0")
    c = node.add_container()
    r = node.run("ADD", conf, "st-missing", c.path)
    assert r.code == 107 and "cbt-no-such-ipam" in r.out["msg"], r
    assert node.link_names() == {"lo"} and node.link_names(c) == {"lo"}
    # The runtime's DEL after that failed ADD must complete, or the pod can never be removed.
    r = node.ok("DEL", conf, "st-missing", c.path)
    assert "cbt-no-such-ipam" in r.stderr, r


@pytest.fixture
def hl_ref(node: Node) -> str:
    """A directory holding the reference host-local as ``hl-ref``; use it as CNI_PATH."""
    directory = node.temp_dir()
    shutil.copy2(REF_HOST_LOCAL, os.path.join(directory, "hl-ref"))
    return directory


def hl_ref_conf(node: Node, data_dir: str, version: str = "1.0.0", **ipam_extra: Any) -> dict[str, Any]:
    ipam = {"type": "hl-ref", "dataDir": data_dir,
            "ranges": [[{"subnet": "10.209.0.0/24"}], [{"subnet": "fd00:209::/64"}]], **ipam_extra}
    return netconf(node.net_name(), node.bridge_name(), ipam, version, isGateway=True)


def test_delegate_through_copied_host_local(node: Node, hl_ref: str) -> None:
    data_dir = node.data_dir()
    conf = hl_ref_conf(node, data_dir)
    net = conf["name"]
    c1, c2 = node.add_container(), node.add_container()

    result = node.add(conf, "hl-1", c1, cni_path=hl_ref)
    assert [ip["address"] for ip in result["ips"]] == ["10.209.0.2/24", "fd00:209::2/64"]
    result2 = node.add(conf, "hl-2", c2, cni_path=hl_ref)
    assert [ip["address"] for ip in result2["ips"]] == ["10.209.0.3/24", "fd00:209::3/64"]
    # The delegate, not the built-in IPAM, wrote the store.
    assert reservations(data_dir, net) == {
        "10.209.0.2": "hl-1\r\neth0", "fd00:209::2": "hl-1\r\neth0",
        "10.209.0.3": "hl-2\r\neth0", "fd00:209::3": "hl-2\r\neth0"}
    assert node.ping(c1, "10.209.0.3") and node.ping(c2, "fd00:209::2")

    node.ok("CHECK", with_prev(conf, result), "hl-1", c1.path, cni_path=hl_ref)
    # CHECK is delegated too: the reference fails once its reservation is gone.
    os.unlink(os.path.join(data_dir, net, "10.209.0.3"))
    os.unlink(os.path.join(data_dir, net, "fd00:209::3"))
    r = node.run("CHECK", with_prev(conf, result2), "hl-2", c2.path, cni_path=hl_ref)
    assert r.rc != 0 and "hl-ref" in r.out["msg"], r

    node.ok("DEL", conf, "hl-1", c1.path, cni_path=hl_ref)
    node.ok("DEL", conf, "hl-2", c2.path, cni_path=hl_ref)
    assert reservations(data_dir, net) == {}
    assert node.veths() == []


def test_delegate_gc_and_status_errors_are_reported(node: Node, hl_ref: str) -> None:
    # The reference (1.1.1) predates GC and STATUS: whatever it says must reach the runtime.
    data_dir = node.data_dir()
    conf = hl_ref_conf(node, data_dir, "1.1.0")
    gc = dict(conf)
    gc["cni.dev/valid-attachments"] = []
    r = node.run("GC", gc, None, None, None, cni_path=hl_ref)
    assert r.rc != 0 and r.code is not None, r
    assert "hl-ref" in r.msg, r
    r = node.run("STATUS", conf, None, None, None, cni_path=hl_ref)
    assert r.rc != 0 and r.code is not None, r
    assert "hl-ref" in r.msg, r


def test_delegate_is_released_when_add_fails_later(node: Node, hl_ref: str) -> None:
    data_dir = node.data_dir()
    conf = hl_ref_conf(node, data_dir, routes=[{"dst": "192.0.2.0/24", "gw": "10.250.9.9"}])
    c = node.add_container()
    r = node.run("ADD", conf, "hl-fail", c.path, cni_path=hl_ref)
    assert r.code == 101, r
    assert reservations(data_dir, conf["name"]) == {}  # the delegate's DEL ran
    assert node.veths() == [] and node.link_names(c) == {"lo"}

