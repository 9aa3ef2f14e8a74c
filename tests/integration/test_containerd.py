"""End to end with containerd 1.6.20 (Debian 12) and ``ctr run --cni``: the built plugin as the
network of a containerd container.

Each test starts its own containerd (config with ``version = 2``, ``root``, ``state`` and
``[grpc] address`` in a temp dir; no systemd), imports a locally built OCI image of a busybox
root file system (tests/oci_image.py; no registry is reachable) and runs containers with
``ctr run --rm --cni --runc-binary /usr/sbin/runc``. ctr itself runs the CNI plugins (libcni
inside the ctr process), so ctr runs in a throwaway node network namespace (tests/plugin.py)
and the bridge, the host veths and every iptables rule live there, never on the real host.

Proved here: the container's eth0 has an address of the conflist's subnet, the MTU of the
node's uplink and the default route via the gateway; it pings the gateway and a second
container on the bridge; while it runs, the IPAM store holds its reservation, the stateDir
its attachment record, the node its host veth and iptables rules, and libcni its cached
result; when ``ctr run --rm`` returns, ctr has run DEL (with an empty CNI_NETNS: the
container's namespace is gone by then) and none of these is left, whether the command exited
0, exited 3, or the task was killed with SIGKILL from another ctr.

Where Debian's ctr 1.6.20 looks (found with a conflist naming a missing plugin type, and
strace): it loads the first file (alphabetical) of /etc/cni/net.d; it searches plugins in
``[/opt/cni/bin /usr/lib/cni]`` (go-cni's default, patched by Debian to add /usr/lib/cni);
libcni caches each result in /var/lib/cni/results/``<network>-<CNI container ID>-<ifname>``
where the CNI container ID is ``<containerd namespace>-<container ID>``. ``ctr run`` has no
option for any of the three (nor does the containerd config: that is the CRI plugin's).

How the test keeps containerd and ctr off the real host: tests/containerd_harness.py (shared
with the CRI tests). In short: containerd runs in the node's network namespace and in a
private mount namespace where /run/containerd is a temp dir; every ctr runs in a private mount
namespace where test-owned directories are bound on /etc/cni/net.d (holding only our
``00-cbt-<hex>.conflist``), /opt/cni/bin (the symlink ``cni-bridge`` -> ``$CNI_BRIDGE_BIN``
plus symlinks to the reference plugins) and /var/lib/cni (libcni's cache), each over an
overlay of its parent so nothing is created on the host. The CRI plugin is disabled here;
containers run in a unique containerd namespace whose cgroups ``/<namespace>/<id>`` are
removed at the end. The clean-up first sends EOF to running ``ctr run`` processes (a holding
container exits, ctr runs DEL), then kills them, then does the harness's steps (tasks,
containers, daemon, leftover processes, cgroups, temp root) and checks the host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import warm
from tests.containerd_harness import (RUN_DIR, RUNC, TIMEOUT, ContainerdDaemon, entries_named, guarded, node_rules,
                                      read_text, records_naming, skip_reason)
from tests.plugin import PATH, Node, node, reservations, token  # noqa: F401
from tests.rootfs import make_busybox_rootfs

_SKIP = skip_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


# --- containerd and ctr ---------------------------------------------------------------------

@dataclass
class Network:
    """A cni-bridge network list as ctr will load it."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: str
    state_dir: str
    log_file: str

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",  # the newest version ctr 1.6's libcni knows
            "name": self.name,
            "plugins": [{
                "type": "cni-bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": True,
                "stateDir": self.state_dir,
                "logFile": self.log_file,
                "logLevel": "info",
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.data_dir,
                    "ranges": [[{"subnet": str(self.subnet), "gateway": str(self.gateway)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        }


class CtrRun:
    """A ``ctr run`` in the foreground; its stdout is read as it comes."""

    def __init__(self, proc: subprocess.Popen[bytes], cid: str, err_path: str) -> None:
        self.proc = proc
        self.cid = cid  # the CNI container ID: <containerd namespace>-<container ID>
        self.err_path = err_path
        self.out = b""

    @property
    def stderr(self) -> str:
        try:
            with open(self.err_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def read_until(self, marker: str, timeout: float = TIMEOUT) -> str:
        """The container's output up to and including the line ``marker``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        wanted = f"{marker}\n".encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} from the container within {timeout}s; output: "
                                     f"{self.out.decode(errors='replace')!r}; ctr stderr: {self.stderr!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = self.proc.wait(timeout=TIMEOUT)
                    raise AssertionError(f"ctr exited (rc={rc}) before {marker!r}; output: "
                                         f"{self.out.decode(errors='replace')!r}; ctr stderr: {self.stderr!r}")
                self.out += chunk
        return self.out[: self.out.index(wanted) + len(wanted)].decode(errors="replace")

    def finish(self, line: str | None = "go", timeout: float = TIMEOUT) -> tuple[int, str]:
        """Send ``line`` to the container's stdin (then EOF); wait for ctr; (rc, all output)."""
        data = f"{line}\n".encode() if line is not None and self.proc.stdin is not None else None
        rest, _ = self.proc.communicate(input=data, timeout=timeout)
        self.out += rest or b""
        return self.proc.returncode, self.out.decode(errors="replace")


class Containerd(ContainerdDaemon):
    """A containerd of this test (CRI plugin disabled), in the node's network namespace, and
    ``ctr run --cni`` processes in the foreground."""

    def __init__(self, node: Node) -> None:  # noqa: F811
        super().__init__(node)
        self.procs: list[subprocess.Popen[bytes]] = []

    def import_busybox(self) -> str:
        """Build the busybox image and import it; returns its name."""
        rootfs = make_busybox_rootfs(os.path.join(self.root, "rootfs"))
        return self.import_image(rootfs, f"docker.io/local/cbt-busybox-{token(4)}:{token(3)}")

    def run(self, image: str, name: str, script: str, stdin: bool = True) -> CtrRun:
        """``ctr run --rm --cni IMAGE NAME sh -c SCRIPT`` in the foreground."""
        err_path = os.path.join(self.root, f"ctr-run-{name}.err")
        argv = self.ctr_argv("run", "--rm", "--cni", "--fifo-dir", os.path.join(self.root, "fifo"),
                             "--runc-binary", RUNC, image, name, "sh", "-c", script)
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, env={"PATH": PATH, **self.node.helper_env()},
                                    bufsize=0,
                                    start_new_session=True)
        self.procs.append(proc)
        return CtrRun(proc, f"{self.namespace}-{name}", err_path)

    def cleanup_steps(self) -> list[Callable[[], list[str]]]:
        return [self._end_ctr_runs, *super().cleanup_steps()]

    def _end_ctr_runs(self) -> list[str]:
        """ctr run still in the foreground: EOF on its stdin lets a holding container finish
        (ctr then runs DEL); one that does not is killed."""
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        return []


@pytest.fixture
def containerd(node: Node) -> Iterator[Containerd]:  # noqa: F811
    """A running containerd of this test in the node namespace; everything it made is
    removed afterwards, also on failure, and the host's CNI and containerd directories and
    mounts are checked to be as they were."""
    daemon = Containerd(node)
    with guarded(daemon):
        daemon.start()
        yield daemon


# --- what the tests look at ---------------------------------------------------------------------

def make_network(node: Node, ctrd: Containerd) -> Network:  # noqa: F811
    subnet = ipaddress.IPv4Network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
    net = Network(name=node.net_name(), bridge=node.bridge_name(), subnet=subnet, data_dir=node.data_dir(),
                  state_dir=node.state_dir, log_file=os.path.join(node.temp_dir(), "plugin.log"))
    path = os.path.join(ctrd.conf_dir, f"00-cbt-{token(4)}.conflist")
    ctrd.tokens += (net.name, os.path.basename(path))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(net.conflist(), handle)
    return net


_INET = re.compile(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)")
_MTU = re.compile(r"eth0(?:@\S+)?: <[^>]*> mtu (\d+)")

# The container's report: its eth0 (address, MTU), its routes, a ping to each TARGET (up to
# three echo requests: one lost packet is not a datapath failure); then "READY". With HOLD it
# waits for a line on stdin before it exits with EXIT.
_REPORT = """
echo ADDR-BEGIN; ip -4 addr show dev eth0; ip link show dev eth0; ip -4 route; echo ADDR-END
for target in {targets}; do
    result=FAIL
    for try in 1 2 3; do
        if ping -c1 -W1 "$target" >/dev/null 2>&1; then result=OK; break; fi
    done
    echo "PING-$result $target"
done
echo READY
{hold}
echo BYE
exit {exit}
"""


def report_script(*targets: object, hold: bool, exit_code: int = 0) -> str:
    return _REPORT.format(targets=" ".join(str(t) for t in targets), hold="read line" if hold else "",
                          exit=exit_code)


@dataclass
class Seen:
    """What the container reported about its network."""

    address: ipaddress.IPv4Interface
    mtu: int
    text: str  # the output of ip addr, ip link and ip route
    pings: dict[str, bool]


def parse_report(text: str) -> Seen:
    block = text.split("ADDR-BEGIN", 1)[1].split("ADDR-END", 1)[0]
    found = _INET.findall(block)
    assert len(found) == 1, f"expected one IPv4 address on the container's eth0: {block!r}"
    mtu = _MTU.search(block)
    assert mtu, f"no MTU for eth0 in {block!r}"
    pings = {m.group(2): m.group(1) == "OK" for m in re.finditer(r"PING-(OK|FAIL) (\S+)", text)}
    return Seen(ipaddress.IPv4Interface(f"{found[0][0]}/{found[0][1]}"), int(mtu.group(1)), block, pings)


def cache_file(ctrd: Containerd, net: Network, cid: str) -> str:
    """Where libcni (in ctr) caches the result: <cache>/results/<network>-<container ID>-<ifname>."""
    return os.path.join(ctrd.cache_dir, "results", f"{net.name}-{cid}-eth0")


def assert_attached(node: Node, ctrd: Containerd, net: Network, run: CtrRun, seen: Seen) -> None:  # noqa: F811
    """While the container runs: everything ADD made is there and names this container."""
    ip = str(seen.address.ip)
    cid = run.cid
    # The IPAM store holds the reservation: file <ip> containing "<container ID>\r\n<ifname>".
    store = reservations(net.data_dir, net.name)
    assert ip in store, f"no reservation for {ip} in {net.data_dir}: {store}"
    assert store[ip].splitlines() == [cid, "eth0"], f"reservation {ip}: {store[ip]!r}"
    # The host veth, on the bridge.
    veth = host_veth_name(net.name, cid, "eth0")
    node.host_veths.add(veth)
    link = node.link(veth)
    assert link is not None and link.get("master") == net.bridge, f"host veth {veth}: {link}"
    # Its masquerade rules, and its record in the stateDir.
    assert node_rules(node, f"id={cid} if=eth0"), "no iptables rule names the container"
    assert records_naming(net.state_dir, cid), f"no attachment record names {cid}"
    # libcni's cached result, in the test's cache dir (ctr's view of /var/lib/cni).
    path = cache_file(ctrd, net, cid)
    assert os.path.isfile(path), f"libcni cached no result at {path}: {os.listdir(ctrd.cache_dir)}"
    with open(path, encoding="utf-8") as handle:
        cached = json.load(handle)
    assert cached.get("containerId") == cid and cached.get("networkName") == net.name, cached
    assert f"{ip}/{net.subnet.prefixlen}" in [a["address"] for a in cached["result"]["ips"]], cached
    # The plugin logged its ADD for this container.
    with open(net.log_file, encoding="utf-8") as handle:
        log = handle.read()
    assert f"ADD {net.name}/{cid}: attached eth0 ({ip}/{net.subnet.prefixlen})" in log, log


def assert_detached(node: Node, ctrd: Containerd, net: Network, run: CtrRun) -> None:  # noqa: F811
    """After ``ctr run`` returned: DEL ran, nothing of the container is left."""
    cid = run.cid
    assert "network review" not in run.stderr, f"ctr reported a failed CNI DEL: {run.stderr}"
    # libcni deletes its cached result only after a successful DEL; ctr (go-cni) says nothing
    # of a DEL error that contains "not found", or "no such file or directory" (no netns).
    assert not os.path.exists(cache_file(ctrd, net, cid)), (
        f"libcni's cached result was not removed, so DEL failed; plugin log:\n{read_text(net.log_file)}\n"
        f"ctr stderr:\n{run.stderr}")
    assert not [ip for ip, owner in reservations(net.data_dir, net.name).items() if cid in owner], \
        f"reservation of {cid} left: {reservations(net.data_dir, net.name)}"
    veth = host_veth_name(net.name, cid, "eth0")
    assert node.link(veth) is None, f"host veth {veth} left in the node"
    assert node_rules(node, f"id={cid} ") == [], "iptables rules of the container left"
    assert records_naming(net.state_dir, cid) == [], f"attachment record of {cid} left"


def assert_host_untouched(ctrd: Containerd, running: bool = False) -> None:
    """The real host's CNI and containerd directories never saw our conflist, plugin link,
    cached results or shim sockets (ctr and containerd saw test-owned directories there)."""
    assert entries_named(ctrd.tokens) == [], f"on the real host: {entries_named(ctrd.tokens)}"
    shim_dir = os.path.join(ctrd.root, "run-containerd", "s")
    shims = os.listdir(shim_dir) if os.path.isdir(shim_dir) else []
    assert shims or not running, "a container runs, but no shim socket is in the test's /run/containerd"
    assert not os.path.isdir(f"{RUN_DIR}/s") or not set(os.listdir(f"{RUN_DIR}/s")) & set(shims), \
        "a shim socket of the test on the real host"


# --- the tests -----------------------------------------------------------------------------------

def test_ctr_run_cni_container_gets_its_network_from_cni_bridge_and_del_releases_it(
        node: Node, containerd: Containerd) -> None:  # noqa: F811
    # An uplink carrying the node's default route: the plugin gives the veths its MTU.
    node.add_uplink("cbtup0", 1400, "198.51.100.1/24", "198.51.100.2")
    image = containerd.import_busybox()
    net = make_network(node, containerd)

    run = containerd.run(image, f"c-{token(3)}", report_script(net.gateway, hold=True))
    seen = parse_report(run.read_until("READY"))

    # What the container sees: an address of the subnet (not the gateway), the uplink's MTU,
    # the default route via the gateway, and the gateway answers.
    assert seen.address.network == net.subnet, f"{seen.address} is not in {net.subnet}"
    assert seen.address.ip != net.gateway
    assert seen.mtu == 1400, f"container MTU {seen.mtu}, the node's uplink has 1400"
    assert f"default via {net.gateway} dev eth0" in seen.text, seen.text
    assert seen.pings == {str(net.gateway): True}, f"the container cannot ping the gateway: {run.out!r}"
    # And the node reaches the container.
    assert any(node.ping(None, str(seen.address.ip)) for _ in range(3)), \
        f"the node cannot ping the container at {seen.address.ip}"
    assert_attached(node, containerd, net, run, seen)
    assert_host_untouched(containerd, running=True)

    rc, out = run.finish()
    assert rc == 0, f"ctr run exited with {rc}: {out!r}; stderr {run.stderr!r}"
    assert out.rstrip().endswith("BYE"), out
    assert_detached(node, containerd, net, run)
    # --rm: container and task are gone; the last attachment took the shared rules with it.
    assert containerd.ctr("containers", "list", "-q").stdout.split() == []
    assert containerd.ctr("tasks", "list", "-q").stdout.split() == []
    assert node_rules(node, "cni-bridge") == [], "rules of cni-bridge left after its last attachment"
    left = [v for v in node.veths() if not v.startswith("cbtup0")]  # the uplink may be a veth pair
    assert left == [], f"veths left in the node: {left}"
    assert_host_untouched(containerd)
    warm.assert_served(node.helper, net.state_dir, at_least=2)  # ADD and DEL


def test_ctr_run_cni_two_containers_on_the_bridge_del_after_a_failing_command_and_a_kill(
        node: Node, containerd: Containerd) -> None:  # noqa: F811
    image = containerd.import_busybox()
    net = make_network(node, containerd)

    first = containerd.run(image, f"a-{token(3)}", report_script(net.gateway, hold=True))
    seen_first = parse_report(first.read_until("READY"))
    assert seen_first.pings == {str(net.gateway): True}, first.out
    assert_attached(node, containerd, net, first, seen_first)

    # A second container gets another address, reaches the first across the bridge and exits 3.
    second = containerd.run(image, f"b-{token(3)}", report_script(net.gateway, seen_first.address.ip,
                                                                  hold=False, exit_code=3), stdin=False)
    rc, out = second.finish(line=None)
    assert rc == 3, f"ctr run should pass the container's exit code 3 on, got {rc}: {out!r} {second.stderr!r}"
    seen_second = parse_report(out)
    assert seen_second.address.network == net.subnet
    assert seen_second.address.ip not in (seen_first.address.ip, net.gateway), (seen_first, seen_second)
    assert seen_second.pings == {str(net.gateway): True, str(seen_first.address.ip): True}, out
    # DEL ran for the second (its command failed) and left the first alone.
    assert_detached(node, containerd, net, second)
    assert_attached(node, containerd, net, first, seen_first)
    assert list(reservations(net.data_dir, net.name)) == [str(seen_first.address.ip)]
    assert_host_untouched(containerd, running=True)

    # The first is killed from outside (SIGKILL to its task): ctr run returns 128+9 and DELs.
    containerd.ctr("tasks", "kill", "--signal", "SIGKILL", first.cid.removeprefix(f"{containerd.namespace}-"))
    rc, out = first.finish(line=None)
    assert rc == 137, f"ctr run exited with {rc}, not 137 (SIGKILL): {out!r}; stderr {first.stderr!r}"
    assert "BYE" not in out, out
    assert_detached(node, containerd, net, first)
    assert reservations(net.data_dir, net.name) == {}
    assert node_rules(node, "cni-bridge") == [], "rules of cni-bridge left after its last attachment"
    assert_host_untouched(containerd)
    warm.assert_served(node.helper, net.state_dir, at_least=4)  # two ADDs and two DELs
