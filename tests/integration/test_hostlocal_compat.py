"""Our store and allocator share one dataDir with the reference host-local binary.

Each test runs /usr/lib/cni/host-local as a process against the same directory
as our Store and checks that either side sees, skips and releases the other's
reservations, and that both write byte-identical files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni_bridge.errors import IPAM_CONFLICT, CniError
from cni_bridge.ipam.allocator import allocate, check, gc, release
from cni_bridge.ipam.ranges import RangeSet, parse_range_set

if TYPE_CHECKING:
    from cni_bridge.ipam.ranges import IPAddress
from cni_bridge.ipam.store import Store

HOST_LOCAL = "/usr/lib/cni/host-local"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.access(HOST_LOCAL, os.X_OK), reason=f"{HOST_LOCAL} not installed"),
]

V4 = "10.99.0.0/29"  # allocatable 10.99.0.2-10.99.0.6
V6 = "fd00:99::/125"  # allocatable fd00:99::2-fd00:99::7


@dataclass
class Net:
    data_dir: Path
    name: str
    subnets: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return self.data_dir / self.name

    def store(self) -> Store:
        return Store(self.data_dir, self.name)

    def range_sets(self) -> list[RangeSet]:
        return [parse_range_set([{"subnet": s}], f"ipam.ranges[{i}]") for i, s in enumerate(self.subnets)]

    def config(self) -> bytes:
        return json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": self.name,
                "type": "bridge",
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(self.data_dir),
                    "ranges": [[{"subnet": s}] for s in self.subnets],
                },
            }
        ).encode()

    def env(self, command: str, cid: str, ifname: str, cni_args: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            # host-local never enters the namespace; any existing path will do.
            "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": ifname,
            "CNI_PATH": "/usr/lib/cni",
        }
        if cni_args:
            env["CNI_ARGS"] = cni_args
        return env

    def ref(self, command: str, cid: str, ifname: str = "eth0", cni_args: str = "") -> dict[str, object]:
        """Run the reference; returns its result (ADD) or error object, {} for empty output."""
        proc = subprocess.run(
            [HOST_LOCAL],
            input=self.config(),
            env=self.env(command, cid, ifname, cni_args),
            capture_output=True,
            timeout=30,
            check=False,
        )
        out = proc.stdout.decode()
        parsed: dict[str, object] = json.loads(out) if out.strip() else {}
        if proc.returncode == 0:
            assert "code" not in parsed, out
        else:
            assert "code" in parsed, (proc.returncode, out, proc.stderr)
        return parsed

    def ref_add(self, cid: str, ifname: str = "eth0", cni_args: str = "") -> list[str]:
        result = self.ref("ADD", cid, ifname, cni_args)
        assert "ips" in result, result
        ips = result["ips"]
        assert isinstance(ips, list)
        return [str(entry["address"]).split("/")[0] for entry in ips]

    def ours(self, cid: str, ifname: str = "eth0", requested: tuple[str, ...] = ()) -> list[str]:
        allocs = allocate(
            self.store(), self.range_sets(), cid, ifname, [ipaddress.ip_address(r) for r in requested]
        )
        return [str(a.ip) for a in allocs]

    def reservations(self) -> dict[str, bytes]:
        return {
            p.name: p.read_bytes()
            for p in self.dir.iterdir()
            if p.name != "lock" and not p.name.startswith("last_reserved_ip.")
        }

    def hint(self, index: int = 0) -> bytes:
        return (self.dir / f"last_reserved_ip.{index}").read_bytes()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cni-bridge-hlcompat-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_net(data_dir: Path, *subnets: str) -> Net:
    return Net(data_dir, f"itest-{uuid.uuid4().hex[:12]}", subnets or (V4,))


def ip(s: str) -> IPAddress:
    return ipaddress.ip_address(s)


def test_reference_reservations_are_taken_and_round_robin_continues(data_dir: Path) -> None:
    net = make_net(data_dir)
    assert net.ref_add("ref1") == ["10.99.0.2"]
    store = net.store()
    assert store.all_reservations() == [(ip("10.99.0.2"), "ref1", "eth0")]
    assert store.find_by_owner("ref1", "eth0") == [ip("10.99.0.2")]
    assert store.last_reserved(0) == ip("10.99.0.2")
    # Our allocator continues from the reference's last_reserved_ip.0 ...
    assert net.ours("ours1") == ["10.99.0.3"]
    # ... and the reference continues from ours.
    assert net.ref_add("ref2") == ["10.99.0.4"]
    # A reference reservation counts as the container's own for duplicate detection.
    with pytest.raises(CniError) as info:
        net.ours("ref1")
    assert (info.value.code, info.value.msg) == (
        IPAM_CONFLICT,
        "failed to allocate for range 0: 10.99.0.2 has been allocated to ref1, duplicate allocation is not allowed",
    )
    # A requested address the reference holds is unavailable to us.
    with pytest.raises(CniError, match="requested IP address 10.99.0.4 is not available in range set 10.99.0.1-10.99.0.6"):
        net.ours("ours2", requested=("10.99.0.4",))
    check(store, "ref1", "eth0", [ip("10.99.0.2")])


def test_reference_wraps_past_our_reservations(data_dir: Path) -> None:
    net = make_net(data_dir)
    assert net.ours("o1") == ["10.99.0.2"]
    assert net.ours("o2", requested=("10.99.0.5",)) == ["10.99.0.5"]
    # From our hint .5 the reference takes .6, wraps, skips gateway .1 and our .2.
    assert net.ref_add("r1") == ["10.99.0.6"]
    assert net.ref_add("r2") == ["10.99.0.3"]
    assert net.ref_add("r3") == ["10.99.0.4"]
    err = net.ref("ADD", "r4")
    assert err["msg"] == "failed to allocate for range 0: no IP addresses available in range set: 10.99.0.1-10.99.0.6"
    # The reference sees our files as taken and as the owner's.
    err = net.ref("ADD", "r5", cni_args="IP=10.99.0.2")
    assert err["msg"] == (
        "failed to allocate for range 0: requested IP address 10.99.0.2 is not available in range set 10.99.0.1-10.99.0.6"
    )
    err = net.ref("ADD", "o1")
    assert err["msg"] == (
        "failed to allocate for range 0: 10.99.0.2 has been allocated to o1, duplicate allocation is not allowed"
    )


def test_files_are_byte_identical(data_dir: Path) -> None:
    theirs = make_net(data_dir / "theirs", V4, V6)
    ours = Net(data_dir / "ours", theirs.name, theirs.subnets)
    for cid, ifname in (("c1", "eth0"), ("c1", "eth1"), ("c2", "net1")):
        assert theirs.ref_add(cid, ifname) == ours.ours(cid, ifname)
    assert theirs.reservations() == ours.reservations()
    assert theirs.reservations()["fd00:99::3"] == b"c1\r\neth1"
    assert theirs.reservations()["10.99.0.4"] == b"c2\r\nnet1"
    for index in (0, 1):
        assert theirs.hint(index) == ours.hint(index)
    assert theirs.hint(1) == b"fd00:99::4"
    assert sorted(p.name for p in theirs.dir.iterdir()) == sorted(p.name for p in ours.dir.iterdir())
    assert (ours.dir / "lock").read_bytes() == (theirs.dir / "lock").read_bytes() == b""


def test_ipv6_all_ones_address_named_alike(data_dir: Path) -> None:
    theirs = make_net(data_dir / "theirs", "fd00:99::/126")
    ours = Net(data_dir / "ours", theirs.name, theirs.subnets)
    for cid in ("a", "b"):
        assert theirs.ref_add(cid) == ours.ours(cid)
    assert set(ours.reservations()) == {"fd00:99::2", "fd00:99::3"}
    assert theirs.reservations() == ours.reservations()


def test_reference_del_releases_our_reservations(data_dir: Path) -> None:
    net = make_net(data_dir, V4, V6)
    assert net.ours("o1") == ["10.99.0.2", "fd00:99::2"]
    assert net.ours("o2") == ["10.99.0.3", "fd00:99::3"]
    assert net.ref("DEL", "o1") == {}
    assert set(net.reservations()) == {"10.99.0.3", "fd00:99::3"}
    # Idempotent on the reference side too.
    assert net.ref("DEL", "o1") == {}


def test_our_release_frees_reference_reservations(data_dir: Path) -> None:
    net = make_net(data_dir, V4, V6)
    assert net.ref_add("r1") == ["10.99.0.2", "fd00:99::2"]
    assert net.ref_add("r1", "eth1") == ["10.99.0.3", "fd00:99::3"]
    assert release(net.store(), "r1", "eth0") == [ip("10.99.0.2"), ip("fd00:99::2")]
    assert set(net.reservations()) == {"10.99.0.3", "fd00:99::3"}
    # The freed attachment can be added again by the reference: nothing of it is left.
    assert net.ref_add("r1") == ["10.99.0.4", "fd00:99::4"]


def test_legacy_files_released_by_both(data_dir: Path) -> None:
    net = make_net(data_dir)
    net.ref_add("r0")  # creates the directory
    (net.dir / "10.99.0.5").write_bytes(b"old1")
    (net.dir / "10.99.0.6").write_bytes(b"old2")
    assert net.ref("DEL", "old1") == {}
    assert release(net.store(), "old2", "eth0") == [ip("10.99.0.6")]
    assert set(net.reservations()) == {"10.99.0.2"}


def test_gc_releases_reference_leaks(data_dir: Path) -> None:
    net = make_net(data_dir)
    net.ref_add("live")
    net.ref_add("leaked")
    released, errors = gc(net.store(), {("live", "eth0")})
    assert (released, errors) == ([ip("10.99.0.3")], [])
    # The reference no longer considers "leaked" attached: no duplicate error.
    assert net.ref_add("leaked") == ["10.99.0.4"]


def test_reference_waits_for_our_lock(data_dir: Path) -> None:
    net = make_net(data_dir)
    store = net.store()
    conf = data_dir / "conf.json"
    conf.write_bytes(net.config())
    with store.lock(), conf.open("rb") as stdin:
        proc = subprocess.Popen(
            [HOST_LOCAL],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=net.env("ADD", "r1", "eth0", ""),
        )
        time.sleep(0.5)
        try:
            assert proc.poll() is None, "host-local ran while we held the lock"
            # While we hold the lock nothing changes under us.
            assert store.all_reservations() == []
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert json.loads(out)["ips"][0]["address"] == "10.99.0.2/29"
