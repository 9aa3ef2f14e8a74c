"""Real traffic through the plugin's firewall: an outside host, echo servers, probes.

Topology of a ``Lab`` (every namespace throwaway, named ``cbt-<8 hex>``)::

    container(s) --veth-- [bridge] node --veth "up0"-- outside
                                   198.51.100.1/24      198.51.100.2/24
                                   2001:db8:1::1/64     2001:db8:1::2/64

The node's default routes point to the outside host, so traffic to it "leaves" the node
and is masqueraded; the outside host has no route to the container subnets, so a reply
comes back only through NAT (tests that need it add such a route themselves). The plugin
runs in the node with the firewall of the test: an iptables flavour (``CNI_BRIDGE_IPTABLES``
nft or legacy), whose tools every iptables command of the tests uses too, or nftables
(``firewallBackend: nftables`` in every network config; the tests' own iptables commands,
such as a FORWARD policy of DROP, then use the nf_tables flavour, as Docker does).

Servers are small Python processes inside a namespace that answer every connection (TCP)
or datagram (UDP) with the peer address they saw, so a probe learns both "did it get
through" and "as whom"; they are killed when the test ends. Probes are a tiny Python
client run with ``ip netns exec``; several run at once, so the negative cases (drops,
which only time out) cost one timeout per batch rather than one each. Every packet goes
to an address inside the namespaces of the lab.

Two kernel details the lab takes care of, or the first IPv6 packets of a test go
astray for a second or two: new links in the node and the outside host skip DAD
(``net.ipv6.conf.default.accept_dad=0``), and the lab waits until its veth can transmit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests import nstools
from tests.plugin import Container, Node, host_local, netconf, node  # noqa: F401

BACKENDS = ("nft", "legacy", "nftables")  # iptables-nft, iptables-legacy, the nftables backend
NFTABLES = "nftables"
ENV_BACKEND = "CNI_BRIDGE_IPTABLES"
NFT_TABLE = ("inet", "cni-bridge")

NODE_V4, NODE_V6 = "198.51.100.1", "2001:db8:1::1"
OUTSIDE_V4, OUTSIDE_V6 = "198.51.100.2", "2001:db8:1::2"
NODE2_V4, NODE2_V6 = "203.0.113.1", "2001:db8:2::1"
OUTSIDE2_V4, OUTSIDE2_V6 = "203.0.113.2", "2001:db8:2::2"
UPLINK = "up0"  # the veth end's name, in the node and in the outside namespace

PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable

# A probe: connect (TCP/SCTP) or send one datagram (UDP), print what the server answered.
# Exit 0 with the answer, 1 with the reason. -I -S: no site, no user paths (fast start).
_CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
kind = {"tcp": (socket.SOCK_STREAM, 0), "udp": (socket.SOCK_DGRAM, 0),
        "sctp": (socket.SOCK_STREAM, socket.IPPROTO_SCTP)}[proto]
s = socket.socket(family, *kind)
s.settimeout(timeout)
try:
    s.connect((host, port))
    if proto == "udp":
        s.send(b"x\n")
        data = s.recv(4096)
    else:
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
except OSError as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
print(data.decode(errors="replace").strip())
"""

# A server: every socket answers each connection (TCP, SCTP) or datagram (UDP) with the
# peer address it saw, then (stream) closes. One process, no fork: concurrent probes
# cannot race each other (socat's UDP-RECVFROM,fork loses datagrams that way).
_SERVER = r"""
import select, socket, struct, sys
kinds = {"tcp": (socket.SOCK_STREAM, 0), "udp": (socket.SOCK_DGRAM, 0),
         "sctp": (socket.SOCK_STREAM, socket.IPPROTO_SCTP)}
IP_PKTINFO, IPV6_RECVPKTINFO, IPV6_PKTINFO = 8, 49, 50
socks = {}
for spec in sys.argv[1:]:
    proto, family, port = spec.split(":")
    fam = socket.AF_INET6 if family == "6" else socket.AF_INET
    s = socket.socket(fam, *kinds[proto])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if proto == "udp":  # answer from the address the datagram went to, not the route's choice
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(port)))
    if proto != "udp":
        s.listen(64)
    socks[s] = proto
print("ready", flush=True)
while True:
    for s in select.select(list(socks), [], [])[0]:
        try:
            if socks[s] == "udp":
                data, anc, flags, peer = s.recvmsg(4096, 1024)
                reply = []
                for level, kind, info in anc:
                    if (level, kind) == (socket.IPPROTO_IPV6, IPV6_PKTINFO):
                        reply = [(level, kind, info[:16] + struct.pack("I", 0))]
                    elif (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO):
                        reply = [(level, kind, struct.pack("I", 0) + info[8:12] + bytes(4))]
                s.sendmsg([peer[0].encode() + b"\n"], reply, 0, peer)
            else:
                conn, peer = s.accept()
                conn.settimeout(1)
                conn.sendall(peer[0].encode() + b"\n")
                conn.close()
        except OSError:
            pass
"""

# Send `count` Ethernet frames carrying a TCP SYN, written straight to a link: the way an
# attacker on the node's L2 segment sends packets that no route of its own would send
# (destination 127.0.0.1 on the wire).
_RAW_SYN = r"""
import socket, struct, sys
ifname, src_mac, dst_mac, src_ip, dst_ip, dport, count = sys.argv[1:8]
def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
out.bind((ifname, 0))
for i in range(int(count)):
    sport = 40000 + i
    tcp = struct.pack("!HHIIBBHHH", sport, int(dport), 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i + 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    mac = lambda text: bytes.fromhex(text.replace(":", ""))
    out.send(mac(dst_mac) + mac(src_mac) + b"\x08\x00" + ip + tcp)
"""


def wait_link_ready(ns: str, ifname: str, timeout: float = 5.0) -> None:
    """Wait until the link can transmit. Right after a veth pair comes up, its carrier and
    queueing discipline are switched on asynchronously (linkwatch); until then frames it
    sends are dropped (a lost neighbour advertisement costs a 1 s retransmission). IPv6
    gives the link its link-local address at that very moment, so that is the sign."""
    deadline = time.monotonic() + timeout
    while True:
        data = nstools.ip_json(ns, "-6", "addr", "show", "dev", ifname, "scope", "link")
        if any(not a.get("tentative") for link in data for a in link.get("addr_info", [])):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ifname} in {ns} has no usable link-local address after {timeout}s: {data}")
        time.sleep(0.005)


def sctp_unsupported_reason() -> str | None:
    """Why SCTP cannot be tested here (None if this kernel has it)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
    except OSError as exc:
        return f"this kernel does not support SCTP sockets ({exc.strerror})"
    return None


@dataclass(frozen=True)
class Probe:
    ns: str  # namespace name the client runs in
    proto: str  # tcp, udp or sctp
    host: str
    port: int
    timeout: float = 1.0

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto} {host}:{self.port} from {self.ns}"


@dataclass(frozen=True)
class Answer:
    probe: Probe
    ok: bool
    text: str  # the server's answer (the peer it saw), or the client's error

    @property
    def peer(self) -> str | None:
        return _unbracket(self.text) if self.ok else None


def _unbracket(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def probe_all(probes: Sequence[Probe]) -> list[Answer]:
    """Run every probe at once; answers in the same order. Protocol "icmp" is one ping."""
    procs = []
    for p in probes:
        if p.proto == "icmp":
            argv = ["ping", "-n", "-q", "-c1", f"-W{max(1, round(p.timeout))}", p.host]
        else:
            argv = [PYTHON, "-I", "-S", "-c", _CLIENT, p.proto, p.host, str(p.port), str(p.timeout)]
        procs.append(subprocess.Popen(["ip", "netns", "exec", p.ns, *argv],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    answers = []
    try:
        for p, proc in zip(probes, procs):
            out, _ = proc.communicate(timeout=p.timeout + 20)
            text = out.strip()
            if p.proto == "icmp":
                text = "echo reply" if proc.returncode == 0 else (text.splitlines() or [""])[-1]
            answers.append(Answer(p, proc.returncode == 0, text))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return answers


def probe(ns: str, proto: str, host: str, port: int, timeout: float = 1.0) -> Answer:
    return probe_all([Probe(ns, proto, host, port, timeout)])[0]


def describe(answers: Sequence[Answer]) -> str:
    return "\n".join(f"  {a.probe}: {'answered ' + repr(a.text) if a.ok else 'FAILED ' + a.text}"
                     for a in answers)


def expect(lab: Lab, answers: Sequence[Answer], wanted: dict[Probe, str | None]) -> None:
    """Each probe got the wanted answer (the peer the server saw; "echo reply" for icmp),
    or, where None is wanted, did not get through. The message shows every probe and the
    node's ruleset."""
    got = {a.probe: a for a in answers}
    wrong = [p for p, peer in wanted.items() if (got[p].peer != peer if peer else got[p].ok)]
    assert not wrong, (f"unexpected outcome for:\n{describe([got[p] for p in wrong])}\n"
                       f"expected: {[(str(p), wanted[p]) for p in wrong]}\nall probes:\n{describe(answers)}\n"
                       f"node ruleset:\n{lab.ruleset()}")


def run_probes(lab: Lab, wanted: dict[Probe, str | None]) -> None:
    """Run every probe of ``wanted`` at once and check the outcomes (see expect)."""
    expect(lab, probe_all(list(wanted)), wanted)


def addresses(result: dict[str, Any]) -> tuple[str, str]:
    """(IPv4, IPv6) address of a dual-stack ADD result, without prefix lengths."""
    v4 = next(ip["address"].split("/")[0] for ip in result["ips"] if "." in ip["address"])
    v6 = next(ip["address"].split("/")[0] for ip in result["ips"] if ":" in ip["address"])
    return v4, v6


def _ns(where: str | Container | Node) -> str:
    return where.name if isinstance(where, (Container, Node)) else where


def stop_servers(servers: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill servers started by start_peer_server, whole process groups (start_new_session)."""
    for proc in servers:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def start_peer_server(ns: str, sockets: Sequence[tuple[str, int, int]]) -> subprocess.Popen[bytes]:
    """A server process in ``ns`` for the given (protocol, family, port) sockets, each
    answering with the peer address it saw; returned once all are bound. The caller kills it."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, PYTHON, "-I", "-S", "-u", "-c", _SERVER,
                             *(f"{proto}:{family}:{port}" for proto, family, port in sockets)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace").strip()
    if line != "ready":
        proc.kill()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"server {list(sockets)} in {ns} did not start: {line} {err}")
    return proc


class Lab:
    """A node (the harness's) plus an outside host, servers, and the test's firewall backend."""

    def __init__(self, node: Node, backend: str) -> None:
        self.node = node
        self.backend = backend
        self.nftables = backend == NFTABLES
        # The iptables the tests' own commands use (and, for the iptables backends, the plugin).
        self.flavour = "nft" if self.nftables else backend
        self.env = {} if self.nftables else {ENV_BACKEND: backend}
        self.servers: list[subprocess.Popen[bytes]] = []
        self.outside = nstools.create_netns()
        try:
            self._wire()
        except BaseException:
            nstools.delete_netns(self.outside)
            raise

    def _wire(self) -> None:
        n, o = self.node.name, self.outside
        # No DAD on new links, also for link-local addresses: while a link's link-local
        # address is tentative the kernel sends no neighbour solicitation for packets it
        # forwards out of that link (unless their source is a local address), so they wait
        # in the neighbour queue for 1-2 s. test_ipv6_inbound_right_after_the_bridge_is_created
        # shows it for the plugin's bridge.
        for ns in (n, o):
            self.sh(ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0")
        self.ip(o, "link", "set", "lo", "up")
        self.ip(n, "link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK, "netns", o)
        for ns, v4, v6 in ((n, NODE_V4, NODE_V6), (o, OUTSIDE_V4, OUTSIDE_V6)):
            self.ip(ns, "addr", "add", f"{v4}/24", "dev", UPLINK)
            self.ip(ns, "-6", "addr", "add", f"{v6}/64", "dev", UPLINK, "nodad")
            self.ip(ns, "link", "set", UPLINK, "up")
        self.ip(n, "route", "add", "default", "via", OUTSIDE_V4, "dev", UPLINK)
        self.ip(n, "-6", "route", "add", "default", "via", OUTSIDE_V6, "dev", UPLINK)
        for ns in (n, o):
            wait_link_ready(ns, UPLINK)

    def cleanup(self) -> None:
        stop_servers(self.servers)
        nstools.delete_netns(self.outside)

    # --- commands -------------------------------------------------------------------

    @staticmethod
    def ip(ns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)

    def sh(self, where: str | Container | Node, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return nstools.run_in_netns(_ns(where), *argv, check=check)

    def iptables(self, family: int, *args: str, ns: str | Container | Node | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        """iptables/ip6tables of the lab's flavour, in the node unless ``ns`` is given."""
        base = "iptables" if family == 4 else "ip6tables"
        return self.sh(ns or self.node, f"{base}-{self.flavour}", "-w", *args, check=check)

    def save(self, family: int, ns: str | Container | Node | None = None) -> str:
        """iptables-save (or ip6tables-save) of the lab's flavour, raw text."""
        base = "iptables" if family == 4 else "ip6tables"
        return self.sh(ns or self.node, f"{base}-{self.flavour}-save").stdout

    def nft_table(self, ns: str | Container | Node | None = None) -> str:
        """``nft -s list table inet cni-bridge`` (no counters), "" if there is no such table."""
        done = self.sh(ns or self.node, "nft", "-s", "list", "table", *NFT_TABLE, check=False)
        return done.stdout if done.returncode == 0 else ""

    def ruleset(self, ns: str | Container | Node | None = None) -> str:
        """Both families' iptables tables without comments and packet counters, and with the
        nftables backend the plugin's table: comparable text."""
        out = []
        for family in (4, 6):
            out.append(f"# IPv{family}")
            for line in self.save(family, ns).splitlines():
                if line.startswith("#"):
                    continue
                out.append(re.sub(r" \[\d+:\d+\]$", "", line))
        if self.nftables:
            out.append("# nftables")
            out.extend(self.nft_table(ns).splitlines())
        return "\n".join(out)

    def forward_policy_drop(self) -> None:
        for family in (4, 6):
            self.iptables(family, "-P", "FORWARD", "DROP")

    def mac(self, ns: str, ifname: str) -> str:
        return str(nstools.ip_json(ns, "link", "show", "dev", ifname)[0]["address"])

    # --- the plugin ---------------------------------------------------------------

    def network(self, v4: str | None, v6: str | None, ports: Sequence[dict[str, Any]] = (),
                **extra: Any) -> dict[str, Any]:
        """A network config as a runtime sends it: ipMasq and default gateway unless
        ``extra`` says otherwise, portMappings in runtimeConfig with the capability."""
        n = self.node
        subnets = [s for s in (v4, v6) if s]
        settings: dict[str, Any] = {"ipMasq": True, "isGateway": True, "isDefaultGateway": True}
        if self.nftables:
            settings["firewallBackend"] = NFTABLES
        settings.update(extra)
        settings = {k: v for k, v in settings.items() if v is not None}
        conf = netconf(n.net_name(), n.bridge_name(), host_local(n.data_dir(), *subnets), **settings)
        conf["capabilities"] = {"portMappings": True}
        if ports:
            conf["runtimeConfig"] = {"portMappings": [dict(p) for p in ports]}
        return conf

    def run(self, command: str, conf: dict[str, Any] | None, cid: str | None = None,
            container: Container | None = None, **kw: Any) -> Any:
        netns = kw.pop("netns_path", container.path if container else None)
        return self.node.run(command, conf, cid, netns, extra_env=self.env, **kw)

    def add(self, conf: dict[str, Any], cid: str, container: Container) -> dict[str, Any]:
        result: dict[str, Any] = self.node.add(conf, cid, container, extra_env=self.env)
        return result

    def ok(self, command: str, conf: dict[str, Any], cid: str | None = None,
           container: Container | None = None, **kw: Any) -> Any:
        """A command that must succeed; ``netns_path`` overrides the container's path."""
        netns = kw.pop("netns_path", container.path if container else None)
        return self.node.ok(command, conf, cid, netns, extra_env=self.env, **kw)

    # --- servers ----------------------------------------------------------------------

    def serve(self, where: str | Container | Node, *sockets: tuple[str, int, int]) -> None:
        """One server process in the namespace for the given (protocol, family, port)
        sockets, each answering with the peer it saw; returns once all are bound."""
        self.servers.append(start_peer_server(_ns(where), sockets))

    def serve_echo(self, where: str | Container | Node, tcp: int | None = None, udp: int | None = None,
                   families: Sequence[int] = (4, 6)) -> None:
        sockets = [(proto, family, port) for proto, port in (("tcp", tcp), ("udp", udp)) if port
                   for family in families]
        self.serve(where, *sockets)

    # --- raw frames ---------------------------------------------------------------------

    def send_raw_syns(self, where: str | Container, ifname: str, src_ip: str, dst_mac: str,
                      dst_ip: str, dport: int, count: int) -> None:
        """TCP SYNs from src_ip to dst_ip:dport written as Ethernet frames onto ``ifname`` in
        ``where``, addressed to dst_mac: no routing decision of the sender is involved, so
        any destination address can be put on the wire."""
        ns = _ns(where)
        self.sh(ns, PYTHON, "-I", "-S", "-c", _RAW_SYN, ifname, self.mac(ns, ifname), dst_mac, src_ip,
                dst_ip, str(dport), str(count))

    def add_second_subnet(self) -> None:
        """203.0.113.0/24 and 2001:db8:2::/64 on the same wire: node .1/::1, outside .2/::2."""
        for ns, v4, v6 in ((self.node.name, NODE2_V4, NODE2_V6), (self.outside, OUTSIDE2_V4, OUTSIDE2_V6)):
            self.ip(ns, "addr", "add", f"{v4}/24", "dev", UPLINK)
            self.ip(ns, "-6", "addr", "add", f"{v6}/64", "dev", UPLINK, "nodad")

    def route_outside_to(self, *subnets: str) -> None:
        """Routes on the outside host to container subnets via the node (no NAT needed back)."""
        for subnet in subnets:
            self.ip(self.outside, "-6" if ":" in subnet else "-4", "route", "add", subnet,
                    "via", NODE_V6 if ":" in subnet else NODE_V4)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    flavour = "nft" if request.param == NFTABLES else request.param
    if not all(shutil_which(f"{base}-{flavour}-{kind}") for base in ("iptables", "ip6tables")
               for kind in ("save", "restore")):
        pytest.skip(f"the {flavour} iptables backend is not installed (Debian package iptables)")
    if request.param == NFTABLES and not shutil_which("nft"):
        pytest.skip("the nftables backend needs nft (Debian package nftables)")
    return str(request.param)


def shutil_which(name: str) -> str | None:
    import shutil
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


@pytest.fixture
def lab(node: Node, backend: str) -> Iterator[Lab]:  # noqa: F811
    """The harness's node, wired to an outside host; servers and namespace removed afterwards."""
    lab = Lab(node, backend)
    try:
        yield lab
    finally:
        lab.cleanup()

