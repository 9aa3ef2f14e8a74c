"""GC and STATUS (cniVersion 1.1.0) of the built-in host-local IPAM, through the executable."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from tests.plugin import Node, host_local, netconf, node, requires_plugin, reservations  # noqa: F401

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.206.0.0/24"
V6 = "fd00:206::/64"


def gc_conf(conf: dict[str, Any], *valid: tuple[str, str]) -> dict[str, Any]:
    out = dict(conf)
    out["cni.dev/valid-attachments"] = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
    return out


def test_gc_releases_reservations_of_unlisted_attachments(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4, V6), isGateway=True)
    data_dir, net = conf["ipam"]["dataDir"], conf["name"]
    for cid in ("gc-1", "gc-2", "gc-3"):
        node.add(conf, cid, node.add_container())
    assert len(reservations(data_dir, net)) == 6

    r = node.ok("GC", gc_conf(conf, ("gc-2", "eth0")), None, None, None)
    assert r.stdout.strip() == "", r
    held = reservations(data_dir, net)
    assert held == {"10.206.0.3": "gc-2\r\neth0", "fd00:206::3": "gc-2\r\neth0"}, held

    # An attachment listed with another ifname is not this one.
    node.ok("GC", gc_conf(conf, ("gc-2", "net1")), None, None, None)
    assert reservations(data_dir, net) == {}

    # The store stays usable: a new ADD round-robins on from the last address.
    c = node.add_container()
    result = node.add(conf, "gc-4", c)
    assert [ip["address"] for ip in result["ips"]] == ["10.206.0.5/24", "fd00:206::5/64"]
    node.ok("GC", gc_conf(conf), None, None, None)  # empty list: release everything
    assert reservations(data_dir, net) == {}


def test_gc_with_empty_list_releases_all(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4))
    for cid in ("gce-1", "gce-2", "gce-3"):
        node.add(conf, cid, node.add_container())
    node.ok("GC", gc_conf(conf), None, None, None)
    assert reservations(conf["ipam"]["dataDir"], conf["name"]) == {}


def test_gc_needs_version_1_1_0(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4), "1.0.0")
    node.add(conf, "gcv-1", node.add_container())
    r = node.run("GC", gc_conf(conf), None, None, None)
    assert r.rc != 0 and r.code == 1, r
    assert len(reservations(conf["ipam"]["dataDir"], conf["name"])) == 1


def test_status_on_fresh_network(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4, V6))
    r = node.ok("STATUS", conf, None, None, None)
    assert r.stdout.strip() == "", r
    assert not os.path.exists(os.path.join(conf["ipam"]["dataDir"], conf["name"]))  # nothing created


def test_status_50_when_the_only_range_set_is_full(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), "10.206.9.0/30"),
                   isGateway=True)
    c = node.add_container()
    node.ok("STATUS", conf, None, None, None)
    node.add(conf, "st-full", c)
    r = node.run("STATUS", conf, None, None, None)
    assert r.rc != 0 and r.code == 50, r
    assert "no free address" in r.out["msg"] and "10.206.9.1-10.206.9.2" in r.out["msg"], r
    node.ok("DEL", conf, "st-full", c.path)
    node.ok("STATUS", conf, None, None, None)


def test_status_50_when_one_of_two_range_sets_is_full(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(),
                   host_local(node.data_dir(), V4, [{"subnet": "fd00:206:9::/126", "rangeStart": "fd00:206:9::2",
                                                     "rangeEnd": "fd00:206:9::2"}]),
                   isGateway=True)
    node.add(conf, "st-half", node.add_container())
    r = node.run("STATUS", conf, None, None, None)
    assert r.code == 50 and "range set 1" in r.out["msg"], r


def _data_dir_under_a_file(node: Node) -> str:
    """A dataDir that can never be created: its parent is a regular file."""
    parent_file = os.path.join(node.temp_dir(), "not-a-dir")
    with open(parent_file, "w", encoding="ascii") as handle:
        handle.write("x")
    return os.path.join(parent_file, "data")


def test_status_50_when_data_dir_is_not_writable(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(_data_dir_under_a_file(node), V4))
    r = node.run("STATUS", conf, None, None, None)
    assert r.rc != 0 and r.code == 50, r
    assert "not writable" in r.out["msg"], r


def test_add_fails_when_data_dir_is_not_writable(node: Node) -> None:
    # What STATUS must predict: ADD cannot reserve there, and leaves nothing behind.
    conf = netconf(node.net_name(), node.bridge_name(), host_local(_data_dir_under_a_file(node), V4))
    c = node.add_container()
    r = node.run("ADD", conf, "st-ro", c.path)
    assert r.rc != 0 and r.code == 106, r
    assert "not-a-dir" in r.out["msg"], r
    assert node.link_names() == {"lo"} and node.link_names(c) == {"lo"}


def test_status_50_when_store_directory_is_immutable(node: Node) -> None:
    # Root ignores permission bits, but not the immutable attribute (chattr +i).
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4))
    c = node.add_container()
    node.add(conf, "st-imm", c)
    store = os.path.join(conf["ipam"]["dataDir"], conf["name"])
    if subprocess.run(["chattr", "+i", store], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i is not supported on the temp directory's filesystem")
    try:
        r = node.run("STATUS", conf, None, None, None)
        assert r.rc != 0 and r.code == 50 and "not writable" in r.out["msg"], r
    finally:
        subprocess.run(["chattr", "-i", store], capture_output=True, check=False)
    node.ok("STATUS", conf, None, None, None)
