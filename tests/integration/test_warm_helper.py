"""The warm helper (cni_bridge/warm_server.py, warm_client.py), end to end in a node namespace.

Proven here:
- on by default: with no setting, a call whose stateDir exists starts a helper, and later
  calls are served by it; "warmHelper": false in the config or CNI_BRIDGE_HELPER=0 turns it
  off (the variable wins over the config either way);
- the first call runs in-process and starts a helper, whose socket is 0600 and root's;
  later calls are served by it (a request child of the helper is seen running);
- many concurrent first calls start exactly one helper process, and all succeed;
- a read-only stateDir, or one that does not exist yet, gets no helper (and the helper never
  creates the directory); the calls succeed in-process;
- a caller in a private mount namespace (``ip netns exec`` makes one per call) runs
  in-process and starts no helper; a caller in another network or mount namespace that
  connects anyway is refused before READY (the socket stays usable);
- version safety: replacing the executable makes the old helper exit and remove its socket;
- fallback: a stale socket of a killed helper means in-process, and a new helper;
- a runtime that kills the plugin on timeout kills the request with it: the child dies, the
  runtime's stdout and stderr pipes reach EOF at once, and DEL afterwards leaves nothing;
- crash safety: SIGKILL of a request child, or of the helper, in the middle of an ADD with
  ipMasq and a published port, then DEL: no veth, rule, reservation or state record is left;
- 100 parallel ADDs through the helper: all succeed with unique addresses;
- an idle helper's RSS is at most 60 MB.
"""

from __future__ import annotations

import json
import os
import random
import fcntl
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import warm
from tests.leftovers import rules, state_records
from tests.plugin import BIN, BUILT, PATH, REF_DIR, Container, Node, host_local, netconf, requires_plugin, reservations

pytestmark = [pytest.mark.integration, requires_plugin]


@pytest.fixture
def node() -> Any:
    n = Node("default")  # as an operator runs it: no setting at all
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
    """A GC in the node's (existing) stateDir starts the helper; returns its pid once it listens."""
    node.ok("GC", gc_conf(conf), ifname=None)
    # Racing first calls may start several; all but the one holding the lock exit at once.
    wait_for(lambda: len(helpers_of(node)) == 1)
    helpers = helpers_of(node)
    assert len(helpers) == 1, f"expected one helper, found {helpers}"
    pid, path = next(iter(helpers.items()))
    assert wait_for(lambda: os.path.exists(path)), "the helper never listened"
    return pid


def plain_conf(node: Node, subnet: str = "10.172.0.0/24", **extra: Any) -> dict[str, Any]:
    """A network without firewall features: its calls never write to the stateDir."""
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), subnet), isGateway=True, **extra)


def test_on_by_default_the_first_call_starts_a_helper_that_serves_the_next(node: Node) -> None:
    conf = plain_conf(node)
    container = node.add_container()
    node.add(conf, "cbt-dflt", container)  # in-process: no helper yet; it starts one once answered
    assert wait_for(lambda: helpers_of(node)), "no helper started with the default settings"
    assert wait_for(lambda: [f for f in os.listdir(node.state_dir) if f.endswith(".sock")])
    node.ok("DEL", conf, "cbt-dflt", container.path)
    assert warm.served_requests(node.state_dir) == 1, "the DEL was not served by the helper"


@pytest.mark.parametrize("config, env, started", [
    (False, {}, False),
    (None, {"CNI_BRIDGE_HELPER": "0"}, False),
    (True, {"CNI_BRIDGE_HELPER": "0"}, False),
    (False, {"CNI_BRIDGE_HELPER": "1"}, True),
], ids=["config-false", "env-0", "env-0-beats-config-true", "env-1-beats-config-false"])
def test_the_config_key_and_the_environment_turn_it_off(config: bool | None, env: dict[str, str],
                                                         started: bool) -> None:
    n = Node("default")
    try:
        extra = {} if config is None else {"warmHelper": config}
        conf = plain_conf(n, "10.174.0.0/24", **extra)
        for _ in range(2):
            assert n.run("GC", gc_conf(conf), ifname=None, extra_env=env).rc == 0
        if started:
            assert wait_for(lambda: helpers_of(n)), "CNI_BRIDGE_HELPER=1 started no helper"
        else:
            time.sleep(0.5)
            assert helpers_of(n) == {}
            assert not [f for f in os.listdir(n.state_dir) if f.startswith("helper-")]
    finally:
        n.cleanup()


def test_concurrent_first_calls_start_one_helper_and_all_succeed(node: Node) -> None:
    conf = plain_conf(node, "10.175.0.0/24")
    containers = [node.add_container() for _ in range(30)]
    seen: set[int] = set()
    stop = threading.Event()

    def sample() -> None:  # every helper process that exists at some moment, starting or not
        while not stop.is_set():
            seen.update(helpers_of(node))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(len(containers)) as pool:
            runs = list(pool.map(lambda i: node.run("ADD", conf, f"cbt-first-{i}", containers[i].path),
                                 range(len(containers))))
        wait_for(lambda: helpers_of(node))
        time.sleep(0.3)
    finally:
        stop.set()
        sampler.join()
    assert [r for r in runs if r.rc != 0 or r.code is not None] == []
    assert len({r.out["ips"][0]["address"] for r in runs}) == len(containers)
    assert len(helpers_of(node)) == 1
    assert len(seen) == 1, f"{len(seen)} helper processes were started for one socket: {sorted(seen)}"


def test_a_read_only_state_dir_gets_no_helper_and_the_same_answer(node: Node) -> None:
    conf = plain_conf(node, "10.176.0.0/24")
    subprocess.run(["chattr", "+i", node.state_dir], check=True)  # read-only, for root too
    container = node.add_container()
    answers = []
    for env in ({}, {"CNI_BRIDGE_HELPER": "0"}):
        run = node.run("ADD", conf, "cbt-ro", container.path, extra_env=env)
        answers.append((run.rc, run.code))
        node.ok("DEL", conf, "cbt-ro", container.path, extra_env=env)
    assert answers[0] == answers[1], f"the default settings changed the answer: {answers}"
    time.sleep(0.5)
    assert helpers_of(node) == {}
    assert os.listdir(node.state_dir) == []


def test_a_state_dir_that_does_not_exist_yet_is_made_by_the_plugin_not_the_helper(node: Node) -> None:
    missing = os.path.join(node.temp_dir(), "not-yet")
    conf = {**plain_conf(node, "10.177.0.0/24"), "stateDir": missing}
    container = node.add_container()
    node.add(conf, "cbt-nodir", container)  # in-process; it makes the directory
    time.sleep(0.5)
    assert helpers_of(node) == {}, "a helper started for a stateDir that did not exist at the call"
    assert not [f for f in os.listdir(missing) if warm.is_helper_file(f)]
    node.ok("DEL", conf, "cbt-nodir", container.path)  # the directory exists now: this call starts one
    assert wait_for(lambda: helpers_of(node)), "the existing stateDir got no helper"


def test_ip_netns_exec_callers_run_in_process_and_start_no_helper(node: Node) -> None:
    conf = plain_conf(node, "10.178.0.0/24")
    pid = warm_up(node, conf)
    path = helpers_of(node)[pid]
    # `ip netns exec` gives each call a mount namespace of its own (and the helper's socket is
    # named after the caller's namespaces): in-process, and no helper for a namespace that ends
    # with the call.
    container = node.add_container()
    env = {"PATH": PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cbt-ipnetns", "CNI_NETNS": container.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR}
    node.host_veths.add(host_veth_name(conf["name"], "cbt-ipnetns", "eth0"))
    stdin = json.dumps({**conf, "stateDir": node.state_dir}).encode()
    proc = subprocess.run(["ip", "netns", "exec", node.name, BIN], input=stdin, env=env, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["ips"], proc
    time.sleep(0.5)
    assert helpers_of(node) == {pid: path}, "a call from a private mount namespace started a helper"
    assert warm.served_requests(node.state_dir) == 0
    # And the helper refuses such a caller if it connects anyway (same network namespace).
    refused = subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-c", CONNECT_AND_READ, path],
                             capture_output=True, text=True, timeout=30, check=False)
    assert refused.stdout.strip() == "b''", refused
    assert warm.served_requests(node.state_dir) == 0
    node.ok("DEL", conf, "cbt-ipnetns", container.path)
    assert warm.served_requests(node.state_dir) == 1


# Connect to a helper's socket, send a STATUS request, print what comes back before the close.
CONNECT_AND_READ = """
import json, socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
    sock.settimeout(5)
    sock.connect(sys.argv[1])
    header = json.dumps({"env": {"CNI_COMMAND": "STATUS"}, "cwd": "/", "umask": 18}).encode()
    try:
        sock.sendall(len(header).to_bytes(4, "big") + header + (0).to_bytes(4, "big"))
        print(sock.recv(1))
    except OSError:
        print(b"")
"""


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
    refused = subprocess.run([sys.executable, "-c", CONNECT_AND_READ, path], capture_output=True, text=True,
                             timeout=30, check=False)
    assert refused.stdout.strip() == "b''", f"a caller from another network namespace was served: {refused}"
    assert helpers_of(node) == {pid: path}, "the helper must keep serving its own namespace"
    assert warm.served_requests(node.state_dir) == 0


def test_replacing_the_executable_retires_the_helper(node: Node) -> None:
    # The bundle the single file extracts, run directly (as the DaemonSet image does): the
    # helper watches the executable it runs from. (Through the single file an upgrade brings a
    # new extraction, hence another build ID and socket; the old helper then idles out.)
    bundle = os.path.join(os.path.dirname(os.path.realpath(BUILT)), "cni-bridge.d")
    copy_dir = os.path.join(node.temp_dir(), "bundle")
    shutil.copytree(bundle, copy_dir, symlinks=True)
    executable = os.path.join(copy_dir, "cni-bridge")
    conf = firewall_conf(node)
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


def test_a_runtime_killing_the_plugin_on_timeout_kills_the_request(node: Node) -> None:
    """As a runtime does on its timeout: SIGKILL the plugin mid-ADD, then DEL. The request
    must end with its caller, as the in-process plugin would: not finish after the DEL (and
    leave its attachment behind), nor keep the runtime's pipes open."""
    conf = firewall_conf(node, port=46181)
    pid = warm_up(node, conf)
    container = node.add_container()
    env = {"PATH": PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cbt-timeout", "CNI_NETNS": container.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR, "CNI_BRIDGE_HELPER": "require"}
    node.host_veths.add(host_veth_name(conf["name"], "cbt-timeout", "eth0"))
    store = os.path.join(conf["ipam"]["dataDir"], conf["name"])
    os.makedirs(store, exist_ok=True)
    lock = os.open(os.path.join(store, "lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the request will wait in IPAM, mid-ADD
    try:
        proc = subprocess.Popen([*node.launcher(env), BIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps({**conf, "stateDir": node.state_dir}).encode())
        proc.stdin.close()
        children = wait_for(lambda: [p for p in warm.helper_processes() if parent(p) == pid], timeout=5)
        assert children, "the ADD never reached the helper"
        time.sleep(0.3)  # GO sent, the child is at the IPAM lock
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: not any(os.path.exists(f"/proc/{c}") for c in children), timeout=3), \
            "the request's child outlived its killed caller"
        # The runtime reads the plugin's pipes to the end: no one may hold them open now.
        for stream in (proc.stdout, proc.stderr):
            readable, _, _ = select.select([stream], [], [], 3)
            assert readable and stream.read() is not None
            stream.close()
    finally:
        os.close(lock)
    node.ok("DEL", conf, "cbt-timeout", container.path)
    time.sleep(0.3)
    assert reservations(conf["ipam"]["dataDir"], conf["name"]) == {}
    assert state_records(node.state_dir) == []
    assert host_veth_name(conf["name"], "cbt-timeout", "eth0") not in node.link_names()


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
