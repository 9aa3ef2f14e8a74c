"""No crash debris: a plugin killed at any point of an ADD or a DEL, then sent the DEL a runtime
sends, leaves the node byte for byte as it was.

The kill is strace's syscall tampering (tests/syscall_kill.py): SIGKILL on entry to one chosen
system call, counted per call as strace counts. A traced run of the same ADD (or DEL) lists its
kill points, every call that changes something (a file created, written, renamed, linked or
removed, a netlink request, iptables-restore or nft started or waited for), and each point is
then hit on its own in a fresh run, which the killed run's trace confirms. Why strace and not a
timer: a timer lands wherever the scheduler puts it, mostly inside Python between calls, and
misses the short windows that matter (between creating a file and writing it); counting calls
hits each one, the same one every time.

The plugin runs in-process (the node's warm helper off): the process killed is the one doing
the work. The node: a dual-stack network (one address per family, so every ADD reserves the same ones)
with ipMasq, isGateway and a published TCP port, on the iptables and the nftables backend. Its
state is taken after a first ADD and DEL (which leave the bridge, its gateway addresses and
forwarding, as they should) and compared after each kill and DEL: links, addresses and routes
of the node and the container, iptables-save of both families, the nft ruleset, the network
sysctls, and every file of stateDir and of the host-local store with its mode and content.

Density: every second point of the second half of the run and every sixth of the first half
(the IP reservations and the veth), from an offset drawn for each run (``CBT_CRASH_OFFSET``
repeats one), so that runs add up to all points; ``CBT_CRASH_DENSITY=full`` takes every point.
The points are shared among ``CBT_CRASH_WORKERS`` nodes (default 3) that run at once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cni_bridge.ipam.store import parse_ip_filename
from tests import node_snapshot, syscall_kill
from tests.firewall_node import missing_tools
from tests.plugin import REF_HOST_LOCAL, SKIP_REASON, Node, host_local, netconf, requires_plugin, requires_reference

pytestmark = [pytest.mark.integration, requires_plugin]

FULL = os.environ.get("CBT_CRASH_DENSITY", "") == "full"
SECOND_HALF_STRIDE, FIRST_HALF_STRIDE = (1, 1) if FULL else (2, 6)
# Which of the strided points a run takes: each run another share, so that runs add up.
OFFSET = int(os.environ.get("CBT_CRASH_OFFSET", random.randrange(SECOND_HALF_STRIDE * FIRST_HALF_STRIDE)))
WORKERS = int(os.environ.get("CBT_CRASH_WORKERS", "3"))
HOST_PORT = 47080
CID = "cbt-crash-0123456789abcdef"
BACKENDS = ("iptables", "nftables")


def _single_address(subnet: str, address: str) -> dict[str, str]:
    return {"subnet": subnet, "rangeStart": address, "rangeEnd": address}


class Worker:
    """One node with one container and one network; `before` is its state between attachments,
    `points` the kill points of a complete ADD and of a complete DEL there."""

    def __init__(self, backend: str) -> None:
        self.node = Node()
        try:
            self.container = self.node.add_container()
            self.data_dir = self.node.data_dir()
            self.logs = self.node.temp_dir()
            self.conf: dict[str, Any] = netconf(
                self.node.net_name(), self.node.bridge_name(),
                host_local(self.data_dir, [_single_address("10.199.0.0/24", "10.199.0.9")],
                           [_single_address("fd99:c7a5::/64", "fd99:c7a5::9")]),
                isGateway=True, ipMasq=True, firewallBackend=backend, stateDir=self.node.state_dir,
                runtimeConfig={"portMappings": [{"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"}]})
            # The first attachment makes the bridge, its gateway addresses, forwarding: the
            # network's, kept after its last DEL as the reference keeps them.
            self.add()
            self.delete()
            self.before = self.state()
            # Each node traces its own runs: the points' signatures name its own directories.
            self.points = {"ADD": self.trace("ADD")}
            self.points["DEL"] = self.trace("DEL")
            changed = node_snapshot.changes(self.before, self.state())
            assert changed == [], f"a complete ADD and DEL left the node changed:\n" + "\n".join(changed)
        except BaseException:
            self.node.cleanup()
            raise

    def state(self) -> dict[str, str]:
        return node_snapshot.take(self.node.name, [self.container.name], [self.node.state_dir, self.data_dir])

    def run(self, command: str, wrapper: list[str] | None = None) -> Any:
        return self.node.run(command, self.conf, CID, self.container.path, "eth0", wrapper=wrapper or [])

    def add(self, wrapper: list[str] | None = None) -> None:
        added = self.run("ADD", wrapper)
        assert added.rc == 0 and added.code is None, f"ADD failed: {added}"

    def delete(self) -> None:
        deleted = self.run("DEL")
        assert deleted.rc == 0 and deleted.stdout == "", f"DEL failed: {deleted}"

    def trace(self, command: str) -> list[syscall_kill.Point]:
        """The kill points of a complete run of `command` (ADD or DEL) on this node."""
        log = os.path.join(self.logs, f"{command}.trace")
        done = self.run(command, syscall_kill.trace_argv(log))
        assert done.rc == 0 and done.code is None, f"traced {command} failed: {done}"
        with open(log, encoding="utf-8", errors="replace") as handle:
            return syscall_kill.points(handle.read())

    def killed(self, command: str, point: syscall_kill.Point) -> str:
        """Run `command` killed at `point`; what went wrong, "" if it died where it should."""
        log = os.path.join(self.logs, "killed.trace")
        done = self.run(command, syscall_kill.kill_argv(point, log))
        with open(log, encoding="utf-8", errors="replace") as handle:
            where = syscall_kill.landed(handle.read())
        if done.rc != -9 or where != point.signature:
            return f"the kill did not land on {point}: rc {done.rc}, died at {where}, stderr {done.stderr[-300:]!r}"
        return ""

    def cleanup(self) -> None:
        self.node.cleanup()


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[str, list[Worker]]]:
    """The workers of each backend, made by the first test that needs them (the ADD and the DEL
    test share them), removed after the module."""
    made: dict[str, list[Worker]] = {}
    try:
        yield made
    finally:
        for workers in made.values():
            for worker in workers:
                worker.cleanup()


def _workers(pools: dict[str, list[Worker]], backend: str) -> list[Worker]:
    if backend not in pools:
        pools[backend] = []
        with ThreadPoolExecutor(WORKERS) as pool:
            pools[backend].extend(pool.map(lambda _: Worker(backend), range(WORKERS)))
    return pools[backend]


def _load_json(path: str) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _torn(worker: Worker) -> list[str]:
    """Files a reader takes for real (reservations, hints, records, claims, definitions) that
    are not whole. Temp files are not read by anyone, so they may be anything."""
    torn = []
    store = os.path.join(worker.data_dir, worker.conf["name"])
    for name in sorted(os.listdir(store)):
        with open(os.path.join(store, name), "rb") as handle:
            content = handle.read()
        if parse_ip_filename(name) is not None and content != f"{CID}\r\neth0".encode():
            torn.append(f"reservation {name}: {content!r}")
        if name.startswith("last_reserved_ip.") and parse_ip_filename(content.decode(errors="replace")) is None:
            torn.append(f"{name}: {content!r}")
    for top, _, files in os.walk(worker.node.state_dir):
        for name in files:
            path = os.path.join(top, name)
            relative = os.path.relpath(path, worker.node.state_dir)
            if name.endswith(".tmp") or name == "lock" or name.startswith("u-"):
                continue
            try:
                doc = _load_json(path) if name != "generation" else None
            except ValueError:
                torn.append(f"stateDir {relative}: not JSON")
                continue
            if relative.startswith("ports/") and not (isinstance(doc, dict) and doc.get("key")):
                torn.append(f"stateDir {relative}: a claim without a holder: {doc!r}")
    return torn


def _hit(worker: Worker, command: str, point: syscall_kill.Point) -> str:
    """Kill `command` at `point`, then DEL (after an ADD for a DEL): "" if the node is as before,
    and no file was half-written in between."""
    if command == "DEL":
        worker.add()
    problem = worker.killed(command, point)
    if problem:
        return problem
    torn = _torn(worker)
    if torn:
        return "half-written after the kill: " + "; ".join(torn)
    deleted = worker.run("DEL")
    if deleted.rc != 0 or deleted.stdout != "":
        return f"the DEL after the kill failed: {deleted}"
    left = node_snapshot.changes(worker.before, worker.state())
    return "\n  ".join(left)


def _kill_everywhere(pools: dict[str, list[Worker]], backend: str, command: str) -> None:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    reason = missing_tools("nftables" if backend == "nftables" else "nft") or (
        None if os.access("/usr/bin/strace", os.X_OK) else "needs strace (Debian package strace)")
    if reason:
        pytest.skip(reason)
    nodes = _workers(pools, backend)
    all_points = nodes[0].points[command]
    assert len(all_points) > 20, f"too few kill points; the trace found {all_points}"
    chosen = [p.position for p in syscall_kill.spread(all_points, SECOND_HALF_STRIDE, FIRST_HALF_STRIDE, OFFSET)]

    def share(index: int) -> list[str]:
        worker, failures = nodes[index], []
        for position in chosen[index::len(nodes)]:
            point = worker.points[command][position]
            problem = _hit(worker, command, point)
            if problem:
                failures.append(f"killed at {point}:\n  {problem}")
                # The next points need a node as it was: start a new one.
                worker.cleanup()
                worker = nodes[index] = Worker(backend)
        return failures

    with ThreadPoolExecutor(len(nodes)) as pool:
        failures = [f for found in pool.map(share, range(len(nodes))) for f in found]
    print(f"{backend} {command}: {len(chosen)} of {len(all_points)} kill points hit (CBT_CRASH_OFFSET={OFFSET})")
    assert failures == [], (f"{len(failures)} of {len(chosen)} kills left debris (CBT_CRASH_OFFSET={OFFSET}):\n"
                            + "\n".join(failures))


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_killed_anywhere_then_del_leaves_the_node_as_before(pools: dict[str, list[Worker]], backend: str) -> None:
    _kill_everywhere(pools, backend, "ADD")


@pytest.mark.parametrize("backend", BACKENDS)
def test_del_killed_anywhere_then_del_leaves_the_node_as_before(pools: dict[str, list[Worker]], backend: str) -> None:
    _kill_everywhere(pools, backend, "DEL")


def test_kill_points_are_found_in_a_trace() -> None:
    """The trace reading itself: points, their per-call counts, and where a kill landed."""
    trace = "\n".join([
        'openat(AT_FDCWD, "/usr/lib/x.so", O_RDONLY|O_CLOEXEC) = 3',
        'openat(AT_FDCWD, "/s/a.json.tmp", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0600) = 7',
        'write(7, "{}", 2)                        = 2',
        'rename("/s/a.json.tmp", "/s/a.json") = 0',
        "sendto(4, [{nlmsg_len=44, nlmsg_type=RTM_NEWLINK, nlmsg_flags=NLM_F_REQUEST}], 44, 0, NULL, 0) = 44",
    ])
    found = syscall_kill.points(trace)
    assert [(p.syscall, p.occurrence, p.signature) for p in found] == [
        ("openat", 2, "openat /s/a.json.tmp"), ("write", 1, "write {}"),
        ("rename", 1, "rename /s/a.json.tmp"), ("sendto", 1, "sendto RTM_NEWLINK")]
    killed = 'write(1, "x", 1) = 1\nrename("/s/a.json.tmp", "/s/a.json") = ?\n+++ killed by SIGKILL +++'
    assert syscall_kill.landed(killed) == "rename /s/a.json.tmp"
    assert syscall_kill.landed('write(1, "x", 1) = 1\n+++ exited with 0 +++') is None
    assert syscall_kill.spread(found, 1, 3) == [found[0], found[2], found[3]]
    assert syscall_kill.spread(found, 2, 2, offset=1) == [found[1], found[3]]


# --- what a killed writer left is no reservation, no claim, and goes at the next write or GC --------


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A node on the iptables backend with the kill points of its ADD."""
    if SKIP_REASON is not None or not os.access("/usr/bin/strace", os.X_OK):
        pytest.skip(SKIP_REASON or "needs strace (Debian package strace)")
    made = Worker("iptables")
    try:
        yield made
    finally:
        made.cleanup()


def _first(worker: Worker, prefix: str) -> syscall_kill.Point:
    return next(p for p in worker.points["ADD"] if p.signature.startswith(prefix))


def _temp_files(worker: Worker) -> list[str]:
    return sorted(path for directory in (worker.node.state_dir, worker.data_dir)
                  for path in node_snapshot.listing(directory) if path.endswith(".tmp"))


def _kill(worker: Worker, point: syscall_kill.Point) -> None:
    problem = worker.killed("ADD", point)
    assert problem == "", problem


def test_a_reservation_a_killed_add_was_writing_is_no_reservation(worker: Worker) -> None:
    """Killed as it writes its address's reservation, the ADD holds no address: the next ADD
    of another container gets it (the network has one address per family), and removes the
    killed writer's temp file."""
    _kill(worker, _first(worker, f"write {CID}"))
    other = worker.node.add_container()
    added = worker.node.run("ADD", worker.conf, "cbt-crash-other", other.path, "eth0")
    assert added.rc == 0 and added.code is None, f"the address is held by a half-written reservation: {added}"
    assert [ip["address"] for ip in added.out["ips"]] == ["10.199.0.9/24", "fd99:c7a5::9/64"]
    assert _temp_files(worker) == [], "the next reservation left the killed writer's temp file"
    assert worker.node.run("DEL", worker.conf, "cbt-crash-other", other.path, "eth0").rc == 0
    worker.delete()
    assert node_snapshot.changes(worker.before, worker.state()) == []


def test_a_port_claim_a_killed_add_was_writing_is_no_claim(worker: Worker) -> None:
    """Killed as it writes its host port's claim, the ADD holds no port: another network's
    attachment publishes the same port (claims are host-wide)."""
    _kill(worker, _first(worker, 'write {\\"key\\"'))
    other = worker.node.add_container()
    conf = {**worker.conf, "name": worker.node.net_name(), "bridge": worker.node.bridge_name(),
            "ipam": host_local(worker.node.data_dir(), "10.198.0.0/24")}
    added = worker.node.run("ADD", conf, "cbt-crash-port", other.path, "eth0")
    assert added.rc == 0 and added.code is None, f"the port is held by a half-written claim: {added}"
    assert worker.node.run("DEL", conf, "cbt-crash-port", other.path, "eth0").rc == 0
    worker.delete()
    state_dir_entries = {k: v for k, v in worker.state().items() if k.startswith("dir0 ")}
    assert state_dir_entries == {k: v for k, v in worker.before.items() if k.startswith("dir0 ")}


def test_gc_removes_the_temp_files_of_killed_writes(worker: Worker) -> None:
    """Killed as it renames or links a file into place (the temp file complete), for each kind
    of file: GC leaves no temp file, and a DEL then leaves the node as before."""
    kinds: dict[str, syscall_kill.Point] = {}  # the first such point in each directory
    for point in worker.points["ADD"]:
        if point.syscall in ("link", "rename"):
            path = point.signature.split(" ", 1)[1]
            where = "store" if path.startswith(worker.data_dir) else path[len(worker.node.state_dir):].split("/")[1]
            kinds.setdefault(where, point)
    # The store's reservations and hints, stateDir's records, claims (ports/) and definitions (shared/).
    assert {"attachments", "shared"} <= set(kinds), f"no records or definitions written: {kinds}"
    gc_conf = {**worker.conf, "cni.dev/valid-attachments": []}
    for point in kinds.values():
        _kill(worker, point)
        assert _temp_files(worker), f"killed at {point}, the ADD left no temp file to remove"
        worker.node.ok("GC", gc_conf, None, None, None)
        assert _temp_files(worker) == [], f"killed at {point}, GC left temp files"
        worker.delete()
        assert node_snapshot.changes(worker.before, worker.state()) == [], f"killed at {point}"


@requires_reference
def test_the_reference_host_local_takes_no_address_for_our_temp_file_and_removes_it(worker: Worker) -> None:
    """Killed just before its reservation is linked into place, our ADD leaves the store's
    temp file holding its key. The reference host-local sharing the store does not take it
    for an address (its ADD of another container gets the network's one address), and its
    DEL of the killed container removes it, as it removes every file holding that key."""
    _kill(worker, next(p for p in worker.points["ADD"] if p.syscall == "link"))
    network = worker.conf["name"]
    assert _temp_files(worker) == [f"{network}/cni-bridge.tmp"]
    stdin = json.dumps({**worker.conf, "cniVersion": "1.0.0"}).encode()

    def reference(command: str, cid: str) -> Any:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": worker.container.path, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        done = subprocess.run([REF_HOST_LOCAL], input=stdin, env=env, capture_output=True, check=False, timeout=30)
        assert done.returncode == 0, f"reference host-local {command}: {done}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    added = reference("ADD", "cbt-crash-reference")
    assert [ip["address"] for ip in added["ips"]] == ["10.199.0.9/24", "fd99:c7a5::9/64"]
    reference("DEL", "cbt-crash-reference")
    reference("DEL", CID)
    assert _temp_files(worker) == []
    worker.delete()
    assert node_snapshot.changes(worker.before, worker.state()) == []
