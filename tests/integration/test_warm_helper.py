"""The warm helper (cni_bridge/warm_server.py, warm_client.py), end to end in a node namespace.

Proven here:
- off by default: without CNI_BRIDGE_HELPER no helper and no socket appear; the config key
  "warmHelper": true turns it on, CNI_BRIDGE_HELPER=0 off whatever the config says;
- "1": the first call runs in-process and starts a helper, whose socket is 0600 and root's;
  later calls are served by it (a request child of the helper is seen running);
- a caller in another network namespace is refused before READY (the socket stays usable);
- version safety: replacing the executable makes the old helper exit and remove its socket;
- fallback: a stale socket of a killed helper means in-process, and a new helper;
- crash safety: SIGKILL of a request child, or of the helper, in the middle of an ADD with
  ipMasq and a published port, then DEL: no veth, rule, reservation or state record is left;
- 100 parallel ADDs through the helper: all succeed with unique addresses;
- an idle helper's RSS is at most 60 MB.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import warm
from tests.integration.test_del_completes import rules, state_records
from tests.plugin import BIN, BUILT, PATH, REF_DIR, Container, Node, host_local, netconf, requires_plugin, reservations

pytestmark = [pytest.mark.integration, requires_plugin]


@pytest.fixture
def node() -> Any:
    n = Node("1")
    try:
        yield n
    finally:
        n.cleanup()


def helpers_of(node: Node) -> dict[int, str]:
    """The helper processes (not request children) in the node's network namespace."""
    target = os.stat(f"/run/netns/{node.name}").st_ino
    found = {pid: path for pid, path in warm.helper_processes().items() if warm.net_inode(pid) == target}
    return {pid: path for pid, path in found.items() if parent(pid) not in found}


def parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    return predicate()


def firewall_conf(node: Node, port: int = 46180) -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), "10.171.0.0/16"),
                   version="1.1.0", isGateway=True, ipMasq=True,
                   runtimeConfig={"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})


def gc_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """GC keeping nothing: only called while the network has no attachment."""
    return {**conf, "cni.dev/valid-attachments": []}


def warm_up(node: Node, conf: dict[str, Any]) -> int:
    """A GC (which takes the state lock) in "1" mode starts the helper; returns its pid once it listens.

    The first GC only creates the stateDir's lock; the second finds it and starts the helper."""
    for _ in range(2):
        node.ok("GC", gc_conf(conf), ifname=None)
    # Racing first calls may start several; all but the one holding the lock exit at once.
    wait_for(lambda: len(helpers_of(node)) == 1)
    helpers = helpers_of(node)
    assert len(helpers) == 1, f"expected one helper, found {helpers}"
    pid, path = next(iter(helpers.items()))
    assert wait_for(lambda: os.path.exists(path)), "the helper never listened"
    return pid


def test_off_by_default_no_helper_no_socket() -> None:
    n = Node("off")
    try:
        conf = netconf(n.net_name(), n.bridge_name(), host_local(n.data_dir(), "10.172.0.0/24"), isGateway=True)
        n.add(conf, "cbt-off", n.add_container())
        n.ok("DEL", conf, "cbt-off", n.containers[0].path)
        time.sleep(0.3)
        assert helpers_of(n) == {}
        assert not [f for f in os.listdir(n.state_dir) if f.startswith("helper-")]
    finally:
        n.cleanup()


@pytest.mark.parametrize("switch", ["config-key", "env-beats-config"])
def test_config_key_turns_it_on_and_the_environment_off(switch: str) -> None:
    n = Node("off")
    try:
        conf = netconf(n.net_name(), n.bridge_name(), host_local(n.data_dir(), "10.174.0.0/24"), warmHelper=True)
        env = {"CNI_BRIDGE_HELPER": "0"} if switch == "env-beats-config" else {}
        for _ in range(2):  # the first call makes the stateDir's lock, the second starts a helper
            assert n.run("GC", gc_conf(conf), ifname=None, extra_env=env).rc == 0
        if switch == "env-beats-config":
            time.sleep(0.5)
            assert helpers_of(n) == {}
        else:
            assert wait_for(lambda: helpers_of(n)), "warmHelper: true in the config started no helper"
    finally:
        n.cleanup()


def test_first_call_starts_a_root_only_helper_that_serves_later_calls(node: Node) -> None:
    conf = firewall_conf(node)
    pid = warm_up(node, conf)
    path = helpers_of(node)[pid]
    st = os.stat(path)
    assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o600 and path.startswith(node.state_dir + "/")
    assert str(os.stat(f"/run/netns/{node.name}").st_ino) in os.path.basename(path)

    container = node.add_container()
    env = {"PATH": PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cbt-w1", "CNI_NETNS": container.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR, "CNI_BRIDGE_HELPER": "require"}
    node.host_veths.add(host_veth_name(conf["name"], "cbt-w1", "eth0"))
    proc = subprocess.Popen([*node.launcher(env), BIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({**conf, "stateDir": node.state_dir}).encode())
    proc.stdin.close()
    children = wait_for(lambda: [p for p in warm.helper_processes() if parent(p) == pid], timeout=5)
    assert proc.stdout is not None
    proc.wait(timeout=60)
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == 0 and json.loads(out)["ips"], out
    assert children, "no request child of the helper was seen: the ADD did not go through it"
    node.ok("DEL", conf, "cbt-w1", container.path)
    assert reservations(conf["ipam"]["dataDir"], conf["name"]) == {}


def test_callers_in_other_namespaces_are_refused(node: Node) -> None:
    pid = warm_up(node, firewall_conf(node))
    path = helpers_of(node)[pid]
    # This test process is in the host's network namespace, not the node's.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        header = json.dumps({"env": {"CNI_COMMAND": "STATUS"}, "cwd": "/", "umask": 18}).encode()
        try:
            sock.sendall(len(header).to_bytes(4, "big") + header + (0).to_bytes(4, "big"))
        except OSError:
            pass
        try:
            answer = sock.recv(1)
        except ConnectionResetError:
            answer = b""
        assert answer == b"", "a caller from another network namespace was served"
    assert helpers_of(node) == {pid: path}, "the helper must keep serving its own namespace"


def test_replacing_the_executable_retires_the_helper(node: Node) -> None:
    # The bundle the single file extracts, run directly (as the DaemonSet image does): the
    # helper watches the executable it runs from. (Through the single file an upgrade brings a
    # new extraction, hence another build ID and socket; the old helper then idles out.)
    bundle = os.path.join(os.path.dirname(os.path.realpath(BUILT)), "cni-bridge.d")
    copy_dir = os.path.join(node.temp_dir(), "bundle")
    shutil.copytree(bundle, copy_dir, symlinks=True)
    executable = os.path.join(copy_dir, "cni-bridge")
    conf = firewall_conf(node)
    for _ in range(2):
        assert node.run("GC", gc_conf(conf), ifname=None, executable=executable).rc == 0
    helpers = wait_for(lambda: helpers_of(node))
    assert len(helpers) == 1
    (pid, path), = helpers.items()
    wait_for(lambda: os.path.exists(path))

    shutil.copy2(executable, executable + ".new")
    os.replace(executable + ".new", executable)  # as an upgrade does: a new file under the same name
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10), "the old helper kept running"
    assert not os.path.exists(path), "the old helper left its socket"
    assert node.run("GC", gc_conf(conf), ifname=None, executable=executable).rc == 0
    new = wait_for(lambda: helpers_of(node))
    assert new and list(new.values()) != [path], "the new build must use another socket name"


def test_a_dead_helpers_socket_means_in_process_and_a_new_helper(node: Node) -> None:
    conf = firewall_conf(node)
    pid = warm_up(node, conf)
    path = helpers_of(node)[pid]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert os.path.exists(path), "the killed helper's socket stays behind, as after a crash"
    container = node.add_container()
    assert node.add(conf, "cbt-stale", container)["ips"]
    new = wait_for(lambda: helpers_of(node))
    assert new and pid not in new
    node.ok("DEL", conf, "cbt-stale", container.path)


@pytest.mark.parametrize("victim", ["child", "helper"])
def test_sigkill_mid_add_then_del_leaves_nothing(node: Node, victim: str) -> None:
    conf = firewall_conf(node)
    pid = warm_up(node, conf)
    links_before, rules_before = node.link_names(), rules(node)
    outcomes: list[int] = []
    for attempt in range(20):  # kill at random moments; a child that finished first proves nothing
        if outcomes.count(11) >= 2 or (victim == "helper" and attempt == 4):
            break
        container = node.add_container()
        cid = f"cbt-kill-{attempt}"
        env = {"PATH": PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": container.path,
               "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR,
               # Through the helper, never in-process: a request that fell back has no child to kill.
               "CNI_BRIDGE_HELPER": "require" if victim == "child" else "1"}
        node.host_veths.add(host_veth_name(conf["name"], cid, "eth0"))
        proc = subprocess.Popen([*node.launcher(env), BIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({**conf, "stateDir": node.state_dir}).encode())
        proc.stdin.close()
        children = wait_for(lambda: [p for p in warm.helper_processes() if parent(p) == pid], timeout=5)
        time.sleep(random.uniform(0.0, 0.01))
        for target in (children if victim == "child" else [pid]):
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)
        out = proc.stdout.read()
        proc.stdout.close()
        answer = json.loads(out)
        outcomes.append(answer.get("code", 0))
        if victim == "child" and answer.get("code") is not None:
            assert answer["code"] == 11 and proc.returncode == 1, answer
        node.ok("DEL", conf, cid, container.path)
        if victim == "helper":
            pid = warm_up(node, conf)
    assert node.link_names() - {conf["bridge"]} == links_before, "links of killed requests are left"
    assert rules(node) == rules_before, "iptables rules of killed requests are left"
    assert reservations(conf["ipam"]["dataDir"], conf["name"]) == {}
    assert state_records(node.state_dir) == []
    if victim == "child":
        assert 11 in outcomes, f"no child was killed mid-request: {outcomes}"


def test_a_hundred_parallel_adds_through_the_helper(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), "10.173.0.0/16"),
                   version="1.1.0", isGateway=True)
    warm_up(node, conf)
    containers = [node.add_container() for _ in range(100)]
    procs = []
    for i, container in enumerate(containers):
        cid = f"cbt-par-{i}"
        env = {"PATH": PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": container.path,
               "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR, "CNI_BRIDGE_HELPER": "require"}
        node.host_veths.add(host_veth_name(conf["name"], cid, "eth0"))
        proc = subprocess.Popen([*node.launcher(env), BIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({**conf, "stateDir": node.state_dir}).encode())
        proc.stdin.close()
        procs.append(proc)
    addresses, failures = [], []
    for proc in procs:
        assert proc.stdout is not None
        proc.wait(timeout=120)
        out = proc.stdout.read()
        proc.stdout.close()
        if proc.returncode != 0:
            failures.append(out.decode(errors="replace"))
            continue
        addresses.append(json.loads(out)["ips"][0]["address"])
    assert failures == []
    assert len(set(addresses)) == 100
    assert len(reservations(conf["ipam"]["dataDir"], conf["name"])) == 100


def test_an_idle_helper_stays_under_60_mb(node: Node) -> None:
    pid = warm_up(node, firewall_conf(node))
    time.sleep(0.5)
    with open(f"/proc/{pid}/status") as handle:
        rss_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
    print(f"idle helper RSS: {rss_kb / 1024:.1f} MB")
    assert rss_kb <= 60 * 1024
