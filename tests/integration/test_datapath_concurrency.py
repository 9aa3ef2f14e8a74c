"""Concurrent ADDs on one new bridge, as a runtime starting several pods at once does.

Timing-dependent by nature: each test runs a few rounds, each on a fresh bridge and
subnet, and fails on the first round that shows a problem. A correct plugin passes
every round whatever the interleaving.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests.plugin import (  # noqa: F401
    BIN,
    PATH,
    REF_DIR,
    Container,
    Node,
    host_local,
    netconf,
    node,
    requires_plugin,
)

pytestmark = [pytest.mark.integration, requires_plugin]


def start_add(node: Node, conf: dict[str, Any], cid: str, c: Container) -> subprocess.Popen[bytes]:
    env = {"PATH": PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": c.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR}
    node.host_veths.add(host_veth_name(conf["name"], cid, "eth0"))
    proc = subprocess.Popen([*node.launcher(env), BIN], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"stateDir": node.state_dir, **conf}).encode())
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, Any]:
    proc.wait(timeout=60)
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    return proc.returncode, json.loads(out) if out.strip() else None


def attached_and_reachable(node: Node, conf: dict[str, Any], cid: str, c: Container, gateway: str) -> str:
    """'' if the attachment works, else what is wrong with it."""
    bridge = conf["bridge"]
    veth = node.link(host_veth_name(conf["name"], cid, "eth0"))
    master = veth.get("master") if veth else None
    if node.link(bridge) is None or master != bridge:
        return (f"ADD {cid} succeeded but its host veth is attached to {master!r}; "
                f"bridge {bridge} {'exists' if node.link(bridge) else 'is gone'}")
    if not node.ping(c, gateway):
        return f"ADD {cid} succeeded but cannot reach its gateway {gateway}"
    return ""


def test_concurrent_adds_on_a_new_bridge_all_succeed(node: Node) -> None:
    data_dir = node.data_dir()
    problems: list[str] = []
    for rnd in range(8):
        conf = netconf(f"cbt-par-{rnd}", node.bridge_name(),
                       host_local(data_dir, f"10.212.{rnd}.0/24", f"fd00:212:{rnd}::/64"), "1.0.0", isGateway=True)
        containers = [node.add_container() for _ in range(6)]
        procs = [start_add(node, conf, f"par-{rnd}-{i}", c) for i, c in enumerate(containers)]
        for i, (proc, c) in enumerate(zip(procs, containers)):
            rc, out = finish(proc)
            cid = f"par-{rnd}-{i}"
            if rc != 0:
                problems.append(f"round {rnd}: ADD {cid} failed: {out and out.get('msg')}")
                continue
            problem = attached_and_reachable(node, conf, cid, c, f"10.212.{rnd}.1")
            if problem:
                problems.append(f"round {rnd}: {problem}")
        if problems:
            break
    assert not problems, "\n".join(problems)


def test_failing_add_does_not_take_down_a_bridge_that_concurrent_adds_use(node: Node) -> None:
    """One ADD that fails late (unreachable route) races with good ADDs on a new bridge.

    Every good ADD must succeed and be attached: the rollback of the failing ADD must not
    delete a bridge (or gateway address) that other attachments use by then.
    """
    data_dir = node.data_dir()
    problems: list[str] = []
    for rnd in range(6):
        net, bridge, subnet = f"cbt-race-{rnd}", node.bridge_name(), f"10.205.{100 + rnd}.0/24"
        good = netconf(net, bridge, host_local(data_dir, subnet), "1.0.0", isGateway=True)
        bad = netconf(net, bridge, host_local(data_dir, subnet, routes=[{"dst": "192.0.2.0/24", "gw": "10.250.9.9"}]),
                      "1.0.0", isGateway=True)
        containers = [node.add_container() for _ in range(5)]
        procs = [start_add(node, bad, f"race-{rnd}-0", containers[0])]
        time.sleep(0.005)  # let the failing ADD create the bridge first
        procs += [start_add(node, good, f"race-{rnd}-{i}", c) for i, c in enumerate(containers) if i]
        for i, (proc, c) in enumerate(zip(procs, containers)):
            rc, out = finish(proc)
            cid = f"race-{rnd}-{i}"
            if i == 0:
                assert rc != 0, "the ADD with the unreachable route succeeded"
                continue
            if rc != 0:
                problems.append(f"round {rnd}: good ADD {cid} failed: {out and out.get('msg')}")
                continue
            problem = attached_and_reachable(node, good, cid, c, f"10.205.{100 + rnd}.1")
            if problem:
                problems.append(f"round {rnd}: {problem}")
        if problems:
            break
    assert not problems, "\n".join(problems)
