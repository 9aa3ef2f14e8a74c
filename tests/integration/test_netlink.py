"""The netlink layer against the real kernel, in throwaway network namespaces only.

Each test gets fresh namespaces from the ``ns`` factory; links are created only
inside them (a Netlink socket opened inside a namespace stays bound to it), and
the namespaces are deleted in the fixture's finalizer whatever happens. The
``stays_home`` fixture fails any test that leaves the test thread in another
namespace.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cni_bridge.errors import LINK_FAILURE, NETNS_FAILURE, SYSCTL_FAILURE, CniError
from cni_bridge.network import netns, pyroute2_lean, sysctl
from cni_bridge.network.naming import interface_name_problem
from cni_bridge.network.netlink import BridgePort, Netlink, NetlinkError
from cni_bridge.network.netlink_socket import NETLINK_NETFILTER, NetlinkSocket
from tests import nstools
from tests.netlink_readback import bridge_port_flags, links, port_vlans

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not nstools.have_privileges(), reason="needs root and iproute2"),
]

IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08


@dataclass
class Ns:
    name: str
    path: str
    fd: int
    nl: Netlink


def own_netns_id() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


@pytest.fixture(autouse=True)
def stays_home() -> Iterator[None]:
    before = own_netns_id()
    yield
    assert own_netns_id() == before, "the test thread was left in another network namespace"


@pytest.fixture
def ns() -> Iterator[Callable[[], Ns]]:
    """Factory of throwaway namespaces, each with an fd and a Netlink bound to it."""
    made: list[Ns] = []

    def make() -> Ns:
        name = nstools.create_netns()
        fd = -1
        try:
            path = nstools.netns_path(name)
            fd = netns.open_netns(path)
            with netns.inside(fd):
                nl = Netlink()
        except BaseException:
            if fd >= 0:
                os.close(fd)
            nstools.delete_netns(name)
            raise
        made.append(Ns(name, path, fd, nl))
        return made[-1]

    try:
        yield make
    finally:
        for n in made:
            n.nl.close()
            os.close(n.fd)
            nstools.delete_netns(n.name)


def veth_pair(n: Ns, a: str = "va", b: str = "vb") -> tuple[int, int]:
    """A veth pair with both ends in ``n``, both up (so the ends have carrier)."""
    n.nl.add_veth(a, b, n.fd, None, None)
    ia, ib = n.nl.link(a), n.nl.link(b)
    assert ia is not None and ib is not None
    n.nl.set_link(ia.index, up=True)
    n.nl.set_link(ib.index, up=True)
    return ia.index, ib.index


# --- links ---------------------------------------------------------------------------


def test_bridge_with_mac_and_mtu(ns: Callable[[], Ns]) -> None:
    a = ns()
    a.nl.add_bridge("br-t", 1400, "02:11:22:33:44:55", False)
    br = a.nl.link("br-t")
    assert br is not None
    assert (br.kind, br.mac, br.mtu, br.master, br.up) == ("bridge", "02:11:22:33:44:55", 1400, 0, False)
    assert a.nl.link_by_index(br.index) == br
    assert "br-t" in [link.name for link in links(a.nl)]
    shown = nstools.ip_json(a.name, "link", "show", "br-t")[0]
    assert shown["address"] == "02:11:22:33:44:55" and shown["mtu"] == 1400
    assert shown["linkinfo"]["info_data"]["vlan_filtering"] == 0


def test_bridge_exists_is_detectable(ns: Callable[[], Ns]) -> None:
    a = ns()
    a.nl.add_bridge("br-t", None, None, False)
    with pytest.raises(NetlinkError) as info:
        a.nl.add_bridge("br-t", None, None, False)
    assert info.value.errno == errno.EEXIST
    assert info.value.code == LINK_FAILURE
    assert '"br-t"' in info.value.msg


def test_bridge_with_vlan_filtering(ns: Callable[[], Ns]) -> None:
    a = ns()
    try:
        a.nl.add_bridge("br-v", None, None, True)
    except NetlinkError as e:
        if e.errno == errno.EOPNOTSUPP:
            assert e.code == LINK_FAILURE
            pytest.skip("kernel built without CONFIG_BRIDGE_VLAN_FILTERING")
        raise
    shown = nstools.ip_json(a.name, "link", "show", "br-v")[0]
    assert shown["linkinfo"]["info_data"]["vlan_filtering"] == 1


def test_missing_links(ns: Callable[[], Ns]) -> None:
    a = ns()
    assert a.nl.link("nope") is None
    assert a.nl.link_by_index(987654) is None
    assert [link.name for link in links(a.nl)] == ["lo"]


def test_veth_peer_created_in_other_netns(ns: Callable[[], Ns]) -> None:
    host, cont = ns(), ns()
    host.nl.add_veth("vh-t", "eth0", cont.fd, 1380, "02:aa:bb:cc:dd:01")

    h = host.nl.link("vh-t")
    p = cont.nl.link("eth0")
    assert h is not None and p is not None
    assert host.nl.link("eth0") is None and cont.nl.link("vh-t") is None
    assert (h.kind, p.kind) == ("veth", "veth")
    assert p.mac == "02:aa:bb:cc:dd:01"
    assert (h.mtu, p.mtu) == (1380, 1380)
    # Each end names the other's ifindex, and a netns id because it is elsewhere.
    assert h.peer_index == p.index and p.peer_index == h.index
    assert h.link_netnsid >= 0 and p.link_netnsid >= 0
    shown = nstools.ip_json(cont.name, "link", "show", "eth0")[0]
    assert shown["address"] == "02:aa:bb:cc:dd:01" and shown["mtu"] == 1380


def test_veth_name_collisions(ns: Callable[[], Ns]) -> None:
    host, cont = ns(), ns()
    host.nl.add_veth("vh-t", "eth0", cont.fd, None, None)
    # Host side taken.
    with pytest.raises(NetlinkError) as info:
        host.nl.add_veth("vh-t", "eth1", cont.fd, None, None)
    assert info.value.errno == errno.EEXIST
    # Peer side taken in the target namespace: same errno, nothing left behind.
    with pytest.raises(NetlinkError) as info:
        host.nl.add_veth("vh-u", "eth0", cont.fd, None, None)
    assert info.value.errno == errno.EEXIST
    assert '"vh-u"' in info.value.msg and '"eth0"' in info.value.msg
    assert host.nl.link("vh-u") is None
    assert sorted(link.name for link in links(cont.nl)) == ["eth0", "lo"]


# Names interface_name_problem refuses, split by what the kernel itself does with them.
KERNEL_REFUSES = ["", "x" * 16, "é" * 8, ".", "..", "a/b", "a:b", "a b", "a\tb", "a\u00a0b", "à", "a\u0800"]
KERNEL_TAKES = ['a"b', "a'b", "a\\b", "a\x01b", "a\u3000b", "a\u200bb"]  # quotes, unprintables, Unicode spaces


def test_kernel_agrees_with_interface_name_problem(ns: Callable[[], Ns]) -> None:
    a = ns()
    for name in KERNEL_REFUSES:
        assert interface_name_problem(name) is not None, name
        with pytest.raises(NetlinkError) as info:
            a.nl.add_bridge(name, None, None, False)
        assert info.value.errno in (errno.EINVAL, errno.ERANGE), (name, info.value)
    # What we refuse beyond the kernel's rules: it would take these names as they are...
    for name in KERNEL_TAKES:
        assert interface_name_problem(name) is not None, name
        a.nl.add_bridge(name, None, None, False)
        assert a.nl.link(name) is not None, name
    # ...and would expand this one as a template, creating a link of another name.
    assert interface_name_problem("cbt%d") is not None
    a.nl.add_bridge("cbt%d", None, None, False)
    assert a.nl.link("cbt%d") is None and a.nl.link("cbt0") is not None
    for name in ("eth0", "é" * 7, "..."):
        assert interface_name_problem(name) is None
        a.nl.add_bridge(name, None, None, False)
        assert a.nl.link(name) is not None, name


def test_set_link_properties(ns: Callable[[], Ns]) -> None:
    host, cont = ns(), ns()
    host.nl.add_bridge("br-t", None, None, False)
    host.nl.add_veth("vh-t", "eth0", cont.fd, None, None)
    br, h = host.nl.link("br-t"), host.nl.link("vh-t")
    assert br is not None and h is not None

    host.nl.set_link(h.index, master=br.index, up=True, mtu=1300, mac="02:00:00:00:aa:01", promisc=True)
    h2 = host.nl.link_by_index(h.index)
    assert h2 is not None
    assert (h2.master, h2.up, h2.mtu, h2.mac, h2.promisc) == (br.index, True, 1300, "02:00:00:00:aa:01", True)
    # The peer is down, so the host end has no carrier: not operationally up.
    assert h2.operstate in ("DOWN", "LOWERLAYERDOWN")

    p = cont.nl.link("eth0")
    assert p is not None
    cont.nl.set_link(p.index, up=True)
    host.nl.set_link(br.index, up=True)
    # The kernel updates operstate asynchronously (linkwatch), so poll briefly.
    deadline = time.monotonic() + 5
    while True:
        h3 = host.nl.link_by_index(h.index)
        assert h3 is not None
        if h3.operstate == "UP" or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert h3.operstate == "UP"

    host.nl.set_link(h.index, master=0, up=False, promisc=False)
    h4 = host.nl.link_by_index(h.index)
    assert h4 is not None
    assert (h4.master, h4.up, h4.promisc) == (0, False, False)
    host.nl.set_link(h.index)  # nothing to change: no request, no error


def test_set_link_on_missing_link(ns: Callable[[], Ns]) -> None:
    a = ns()
    with pytest.raises(NetlinkError) as info:
        a.nl.set_link(987654, up=True)
    assert info.value.errno == errno.ENODEV and "#987654" in info.value.msg


def test_bridge_port_flags(ns: Callable[[], Ns]) -> None:
    a = ns()
    a.nl.add_bridge("br-t", None, None, False)
    br = a.nl.link("br-t")
    assert br is not None
    port, _ = veth_pair(a)
    assert bridge_port_flags(a.nl, port) is None  # not a bridge port yet
    a.nl.set_link(port, master=br.index)
    assert bridge_port_flags(a.nl, port) == {"hairpin": False, "isolated": False}

    a.nl.set_bridge_port(port, hairpin=True, isolated=True)
    assert bridge_port_flags(a.nl, port) == {"hairpin": True, "isolated": True}
    shown = nstools.ip_json(a.name, "link", "show", "va")[0]["linkinfo"]["info_slave_data"]
    assert shown["hairpin"] is True and shown["isolated"] is True

    a.nl.set_bridge_port(port, hairpin=None, isolated=False)
    assert bridge_port_flags(a.nl, port) == {"hairpin": True, "isolated": False}
    a.nl.set_bridge_port(port, hairpin=False, isolated=None)
    assert bridge_port_flags(a.nl, port) == {"hairpin": False, "isolated": False}


def test_bridge_ports_lists_every_port_of_every_bridge_and_nothing_else(ns: Callable[[], Ns]) -> None:
    a = ns()
    assert a.nl.bridge_ports() == []
    bridges = {}
    for name in ("br-a", "br-b"):
        a.nl.add_bridge(name, None, None, False)
        found = a.nl.link(name)
        assert found is not None
        bridges[name] = found.index
    up_port, _ = veth_pair(a, "va", "vb")  # vb stays out of any bridge
    down_port, _ = veth_pair(a, "vc", "vd")
    a.nl.set_link(up_port, master=bridges["br-a"])
    a.nl.set_link(down_port, master=bridges["br-b"], up=False)
    assert sorted(a.nl.bridge_ports(), key=lambda p: p.name) == [
        BridgePort(up_port, "va", bridges["br-a"], True),
        BridgePort(down_port, "vc", bridges["br-b"], False),
    ]


def test_port_vlan(ns: Callable[[], Ns]) -> None:
    a = ns()
    a.nl.add_bridge("br-t", None, None, False)
    br = a.nl.link("br-t")
    assert br is not None
    port, _ = veth_pair(a)
    a.nl.set_link(port, master=br.index)
    try:
        a.nl.set_port_vlan(port, 10)
    except NetlinkError as e:
        if e.errno == errno.EOPNOTSUPP:
            assert e.code == LINK_FAILURE and "VLAN 10" in e.msg
            pytest.skip("kernel built without CONFIG_BRIDGE_VLAN_FILTERING")
        raise
    assert port_vlans(a.nl, port) == [(10, True, True)]
    a.nl.set_port_vlan(port, 10)  # idempotent
    assert port_vlans(a.nl, port) == [(10, True, True)]


def test_del_link_is_idempotent(ns: Callable[[], Ns]) -> None:
    host, cont = ns(), ns()
    host.nl.add_bridge("br-t", None, None, False)
    host.nl.add_veth("vh-t", "eth0", cont.fd, None, None)
    br = host.nl.link("br-t")
    assert br is not None
    assert host.nl.del_link("vh-t") is True
    assert host.nl.del_link("vh-t") is False
    # Deleting one end of a veth removes its peer in the other namespace too.
    assert cont.nl.link("eth0") is None
    assert host.nl.del_link(br.index) is True
    assert host.nl.del_link(br.index) is False
    assert host.nl.del_link("never-was") is False


# --- addresses -----------------------------------------------------------------------


def test_ipv4_address_sets_broadcast(ns: Callable[[], Ns]) -> None:
    a = ns()
    idx, _ = veth_pair(a)
    a.nl.add_address(idx, "10.77.0.2", 24)
    a.nl.add_address(idx, "10.78.0.2", 31)
    got = a.nl.addresses(idx, socket.AF_INET)
    assert [(x.address, x.prefixlen) for x in got] == [("10.77.0.2", 24), ("10.78.0.2", 31)]
    assert all(x.index == idx and x.family == socket.AF_INET for x in got)

    info = nstools.ip_json(a.name, "addr", "show", "dev", "va")[0]["addr_info"]
    by_addr = {x["local"]: x for x in info if x["family"] == "inet"}
    assert by_addr["10.77.0.2"]["broadcast"] == "10.77.0.255"
    assert "broadcast" not in by_addr["10.78.0.2"]  # /31: no broadcast, like ip addr add

    with pytest.raises(NetlinkError) as e:
        a.nl.add_address(idx, "10.77.0.2", 24)
    assert e.value.errno == errno.EEXIST
    assert a.nl.del_address(idx, "10.77.0.2", 24) is True
    assert a.nl.del_address(idx, "10.77.0.2", 24) is False
    assert a.nl.del_address(987654, "10.77.0.2", 24) is False
    assert [x.address for x in a.nl.addresses(idx, socket.AF_INET)] == ["10.78.0.2"]


def test_ipv6_address_nodad(ns: Callable[[], Ns]) -> None:
    a = ns()
    idx, _ = veth_pair(a)
    a.nl.add_address(idx, "fd77::2", 64, nodad=True)
    got = [x for x in a.nl.addresses(idx, socket.AF_INET6) if x.address == "fd77::2"]
    assert len(got) == 1 and got[0].prefixlen == 64
    assert got[0].flags & IFA_F_NODAD
    assert not got[0].flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    assert all(x.family == socket.AF_INET6 for x in a.nl.addresses(family=socket.AF_INET6))
    assert a.nl.del_address(idx, "fd77::2", 64) is True
    assert a.nl.del_address(idx, "fd77::2", 64) is False


def test_invalid_address_is_a_link_failure(ns: Callable[[], Ns]) -> None:
    a = ns()
    with pytest.raises(CniError) as info:
        a.nl.add_address(1, "10.0.0.300", 24)
    assert info.value.code == LINK_FAILURE and "10.0.0.300" in info.value.msg


# --- routes --------------------------------------------------------------------------


def test_routes(ns: Callable[[], Ns]) -> None:
    host, cont = ns(), ns()
    host.nl.add_veth("vh-t", "eth0", cont.fd, None, None)
    e = cont.nl.link("eth0")
    assert e is not None
    assert cont.nl.default_route_oif(socket.AF_INET) is None

    cont.nl.add_address(e.index, "10.77.0.2", 24)
    cont.nl.add_address(e.index, "fd77::2", 64, nodad=True)
    cont.nl.set_link(e.index, up=True)
    cont.nl.add_route(None, 0, gateway="10.77.0.1", family=socket.AF_INET)
    cont.nl.add_route(None, 0, gateway="fd77::1", family=socket.AF_INET6, oif=e.index)
    cont.nl.add_route(
        "10.99.0.0", 16, oif=e.index, family=socket.AF_INET, table=100, priority=50, mtu=1300, advmss=1200
    )
    cont.nl.add_route("10.98.0.0", 16, gateway="10.77.0.1", family=socket.AF_INET, table=1000)

    v4 = cont.nl.routes(socket.AF_INET)
    default = [r for r in v4 if r.dst == ""]
    assert len(default) == 1
    assert (default[0].dst_len, default[0].gateway, default[0].oif, default[0].table) == (0, "10.77.0.1", e.index, 254)
    assert default[0].proto == 3  # RTPROT_BOOT, as "ip route add" would say
    assert any(r.dst == "10.77.0.0" and r.dst_len == 24 and r.scope == 253 for r in v4)  # kernel's subnet route
    assert not any(r.dst == "10.99.0.0" for r in v4)

    t100 = cont.nl.routes(socket.AF_INET, table=100)
    assert [(r.dst, r.dst_len, r.oif, r.priority, r.table, r.scope) for r in t100] == [
        ("10.99.0.0", 16, e.index, 50, 100, 253)
    ]
    shown = nstools.ip_json(cont.name, "route", "show", "table", "100")[0]
    assert shown["metric"] == 50 and shown["metrics"][0] == {"mtu": 1300, "advmss": 1200}
    t1000 = cont.nl.routes(socket.AF_INET, table=1000)
    assert [(r.dst, r.gateway, r.table) for r in t1000] == [("10.98.0.0", "10.77.0.1", 1000)]

    v6 = [r for r in cont.nl.routes(socket.AF_INET6) if r.dst == ""]
    assert [(r.gateway, r.oif) for r in v6] == [("fd77::1", e.index)]
    assert cont.nl.default_route_oif(socket.AF_INET) == e.index
    assert cont.nl.default_route_oif(socket.AF_INET6) == e.index

    with pytest.raises(NetlinkError) as info:
        cont.nl.add_route(None, 0, gateway="10.77.0.1", family=socket.AF_INET)
    assert info.value.errno == errno.EEXIST and "default via 10.77.0.1" in info.value.msg


class DumpSpy:
    """Counts what the kernel sends back to a socket's dumps (before any filtering of ours)."""

    def __init__(self, nl: Netlink, monkeypatch: pytest.MonkeyPatch) -> None:
        self.replies: list[Any] = []
        self.dumps = 0
        real = nl.dump

        def dump(what: str, msg: Any, msg_type: int) -> list[Any]:
            self.dumps += 1
            replies = real(what, msg, msg_type)
            self.replies.extend(replies)
            return replies

        monkeypatch.setattr(nl, "dump", dump)


def test_the_kernel_filters_dumps_so_their_cost_does_not_grow_with_the_links(
        ns: Callable[[], Ns], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every container adds a link, addresses and routes to the host: an ADD that lists the
    bridge's addresses or the main table must not receive all of them (strict checking)."""
    a = ns()
    indexes = [veth_pair(a, f"va{i}", f"vb{i}")[0] for i in range(4)]
    for i, index in enumerate(indexes):
        a.nl.add_address(index, f"10.66.{i}.1", 24)
        a.nl.add_address(index, f"fd66:{i}::1", 64, nodad=True)
    a.nl.add_route("10.99.0.0", 16, oif=indexes[0], family=socket.AF_INET, table=100)
    spy = DumpSpy(a.nl, monkeypatch)

    got = a.nl.addresses(indexes[2], socket.AF_INET)
    assert [(x.address, x.index) for x in got] == [("10.66.2.1", indexes[2])]
    assert len(spy.replies) == 1
    spy.replies.clear()
    assert {x.address for x in a.nl.addresses(indexes[1])} >= {"10.66.1.1", "fd66:1::1"}
    assert {reply["index"] for reply in spy.replies} == {indexes[1]}

    spy.replies.clear()
    t100 = a.nl.routes(socket.AF_INET, table=100)
    assert [(r.dst, r.table) for r in t100] == [("10.99.0.0", 100)]
    assert len(spy.replies) == 1  # not the main and local tables' routes of 4 links

    # What does not exist is empty, as without strict checking.
    assert a.nl.addresses(987654) == []
    assert a.nl.routes(socket.AF_INET, table=4242) == []


def test_the_ipv6_default_route_is_looked_up_not_dumped(ns: Callable[[], Ns], monkeypatch: pytest.MonkeyPatch) -> None:
    a = ns()
    indexes = [veth_pair(a, f"va{i}", f"vb{i}")[0] for i in range(3)]
    spy = DumpSpy(a.nl, monkeypatch)
    assert a.nl.default_route_oif(socket.AF_INET6) is None
    a.nl.add_address(indexes[1], "fd77::2", 64, nodad=True)
    a.nl.add_address(indexes[2], "fd78::2", 64, nodad=True)
    a.nl.add_route(None, 0, gateway="fd77::1", family=socket.AF_INET6, oif=indexes[1], priority=2000)
    assert a.nl.default_route_oif(socket.AF_INET6) == indexes[1]
    # The lowest metric wins, as it does for the kernel's own choice.
    a.nl.add_route(None, 0, gateway="fd78::1", family=socket.AF_INET6, oif=indexes[2], priority=100)
    assert a.nl.default_route_oif(socket.AF_INET6) == indexes[2]
    assert spy.dumps == 0
    # A more specific route than the default matching "::" leaves it to the dump, which agrees.
    a.nl.add_route("::", 1, gateway="fd77::1", family=socket.AF_INET6, oif=indexes[1])
    assert a.nl.default_route_oif(socket.AF_INET6) == indexes[2]
    assert spy.dumps == 1


def test_route_via_unreachable_gateway_fails(ns: Callable[[], Ns]) -> None:
    a = ns()
    with pytest.raises(NetlinkError) as info:
        a.nl.add_route(None, 0, gateway="10.55.0.1", family=socket.AF_INET)
    assert info.value.errno == errno.ENETUNREACH and info.value.code == LINK_FAILURE


def test_route_family_mismatch(ns: Callable[[], Ns]) -> None:
    a = ns()
    with pytest.raises(CniError, match="not of the route's family"):
        a.nl.add_route(None, 0, gateway="fd00::1", family=socket.AF_INET)


def test_closed_socket(ns: Callable[[], Ns]) -> None:
    a = ns()
    with netns.inside(a.fd), Netlink() as nl:
        pass
    with pytest.raises(CniError, match="closed"):
        nl.link("lo")


def test_transport_speaks_another_family(ns: Callable[[], Ns]) -> None:
    """The transport knows no rtnetlink: ctnetlink messages go through it unchanged."""
    a = ns()
    nfct = pyroute2_lean.load("netlink.nfnetlink.nfctsocket")
    ct_get = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
    msg = nfct.nfct_msg()
    msg["nfgen_family"] = socket.AF_INET
    with netns.inside(a.fd):
        ct = NetlinkSocket(NETLINK_NETFILTER)  # stays in the namespace after we step out
    with ct:
        assert ct.dump("list conntrack entries", msg, ct_get) == []  # a fresh namespace tracks nothing
        bad = nfct.nfct_msg()
        bad["nfgen_family"] = socket.AF_INET
        with pytest.raises(NetlinkError) as info:
            ct.request("get an unnamed conntrack entry", bad, ct_get)  # a GET needs a tuple
        assert info.value.errno == errno.EINVAL and info.value.code == LINK_FAILURE


# --- namespaces ----------------------------------------------------------------------


def test_open_netns_missing_path() -> None:
    path = f"/run/netns/{nstools.unique_name()}"
    with pytest.raises(CniError) as info:
        netns.open_netns(path)
    assert info.value.code == NETNS_FAILURE
    assert info.value.msg == f'failed to open netns "{path}": no such file or directory'
    assert not os.path.exists(path)  # never created


def test_open_netns_not_a_netns_file() -> None:
    with tempfile.NamedTemporaryFile() as f:
        with pytest.raises(CniError) as info:
            netns.open_netns(f.name)
    assert info.value.code == NETNS_FAILURE and "not a network namespace" in info.value.msg
    # A namespace file of another type is refused as well.
    with pytest.raises(CniError) as info:
        netns.open_netns("/proc/self/ns/uts")
    assert info.value.code == NETNS_FAILURE and "not a network namespace" in info.value.msg


def nsfs_identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def test_open_netns_opens_that_namespace(ns: Callable[[], Ns]) -> None:
    a, b = ns(), ns()
    again = netns.open_netns(a.path)
    try:
        assert nsfs_identity(again) == nsfs_identity(a.fd)
        assert nsfs_identity(again) != nsfs_identity(b.fd)
    finally:
        os.close(again)


def test_inside_switches_and_restores_on_exception(ns: Callable[[], Ns]) -> None:
    a = ns()
    home = own_netns_id()
    target = os.fstat(a.fd)
    with pytest.raises(RuntimeError, match="boom"):
        with netns.inside(a.fd):
            assert own_netns_id() == (target.st_dev, target.st_ino)
            raise RuntimeError("boom")
    assert own_netns_id() == home
    # Nested use returns to the outer namespace, then home.
    b = ns()
    with netns.inside(a.fd):
        with netns.inside(b.fd):
            pass
        assert own_netns_id() == (target.st_dev, target.st_ino)
    assert own_netns_id() == home


def test_inside_bad_fd_does_not_move() -> None:
    home = own_netns_id()
    with tempfile.TemporaryFile() as f:
        with pytest.raises(CniError) as info:
            with netns.inside(f.fileno()):
                raise AssertionError("the body must not run")
    assert info.value.code == NETNS_FAILURE
    assert own_netns_id() == home


# --- sysctls -------------------------------------------------------------------------


def test_sysctl_in_throwaway_netns(ns: Callable[[], Ns]) -> None:
    a = ns()
    # A dotted name like a VLAN's (this kernel has neither dummy nor 8021q links).
    a.nl.add_veth("d0.5", "d0.6", a.fd, None, None)
    root_forward = sysctl.read("net/ipv4/ip_forward")
    with netns.inside(a.fd):
        # Guard: everything below must hit the throwaway namespace only.
        assert own_netns_id() == (os.fstat(a.fd).st_dev, os.fstat(a.fd).st_ino)
        assert sysctl.read("net/ipv4/ip_forward") == "0"
        assert sysctl.ensure("net/ipv4/ip_forward", 1) is True
        assert sysctl.ensure("net/ipv4/ip_forward", "1") is False
        assert sysctl.read("net/ipv4/ip_forward") == "1"
        key = ("net/ipv6/conf/{}/accept_ra", "d0.5")
        sysctl.write(key, 0)
        assert sysctl.read(key) == "0"
        assert sysctl.read("net/ipv6/conf/d0.5/accept_ra") == "0"  # dots are literal
        assert sysctl.read(("net/ipv6/conf/{}/accept_ra", "nope0")) is None
        with pytest.raises(CniError) as info:
            sysctl.write(("net/ipv6/conf/{}/accept_ra", "nope0"), 0)
        assert info.value.code == SYSCTL_FAILURE and "nope0" in info.value.msg
    assert sysctl.read("net/ipv4/ip_forward") == root_forward


@pytest.mark.parametrize(
    "key",
    [
        "kernel/hostname",
        "/net/ipv4/ip_forward",
        "net/../kernel/hostname",
        "net/ipv4//ip_forward",
        ("net/ipv6/conf/{}/accept_ra", "../../../kernel"),
        ("net/ipv6/conf/{}/accept_ra", ".."),
        ("net/ipv6/conf/{}/accept_ra", "a/b"),
        ("net/ipv6/conf/{}/accept_ra", ""),
        ("net/ipv6/conf/{}/accept_ra", "x" * 16),
        ("net/ipv6/conf/accept_ra", "eth0"),
        ("kernel/{}", "eth0"),
    ],
)
def test_sysctl_rejects_bad_keys(key: sysctl.Key) -> None:
    with pytest.raises(CniError) as info:
        sysctl.read(key)
    assert info.value.code == SYSCTL_FAILURE
