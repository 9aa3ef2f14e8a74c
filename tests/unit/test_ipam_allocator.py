"""The host-local store and allocator, against temporary directories."""

from __future__ import annotations

import fcntl
import ipaddress
import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cni_bridge.errors import (
    CHECK_FAILED,
    IPAM_CONFLICT,
    IPAM_EXHAUSTED,
    IPAM_STORE_FAILURE,
    CniError,
)
from cni_bridge.ipam.allocator import Allocation, allocate, check, gc, has_free_address, release
from cni_bridge.ipam.ranges import RangeSet, parse_range_set
from cni_bridge.ipam.store import Store, ip_filename, parse_ip_filename

if TYPE_CHECKING:
    from cni_bridge.ipam.ranges import IPAddress

pytestmark = pytest.mark.unit

NET = "testnet"


def ip(s: str) -> IPAddress:
    return ipaddress.ip_address(s)


def rs(*ranges: dict[str, str]) -> RangeSet:
    return parse_range_set(list(ranges), "ipam.ranges[0]")


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path, NET)


def netdir(store: Store) -> Path:
    return Path(store.directory)


def files(store: Store) -> set[str]:
    return {p.name for p in netdir(store).iterdir()}


def reserved(store: Store) -> dict[str, bytes]:
    """Reservation file name -> raw contents."""
    return {
        p.name: p.read_bytes()
        for p in netdir(store).iterdir()
        if p.name != "lock" and not p.name.startswith("last_reserved_ip.")
    }


def write(store: Store, name: str, data: bytes) -> None:
    netdir(store).mkdir(parents=True, exist_ok=True)
    (netdir(store) / name).write_bytes(data)


def ips_of(allocs: list[Allocation]) -> list[str]:
    return [str(a.ip) for a in allocs]


def err(exc_info: pytest.ExceptionInfo[CniError]) -> tuple[int, str]:
    return exc_info.value.code, exc_info.value.msg


SMALL = {"subnet": "10.0.0.0/29"}  # allocatable .2-.6 (rangeStart .1 is the gateway)


# == store ==================================================================


def test_directory_and_lock_created_on_demand(tmp_path: Path, umask022: None) -> None:
    s = Store(tmp_path / "data", NET)
    assert not (tmp_path / "data").exists()
    with s.lock():
        pass
    d = tmp_path / "data" / NET
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    lock = d / "lock"
    assert lock.read_bytes() == b""
    assert stat.S_IMODE(lock.stat().st_mode) == 0o750


def test_reserve_writes_reference_format(store: Store, umask022: None) -> None:
    assert store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    d = netdir(store)
    assert (d / "10.0.0.2").read_bytes() == b"c1\r\neth0"
    assert stat.S_IMODE((d / "10.0.0.2").stat().st_mode) == 0o600
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.0.0.2"
    assert stat.S_IMODE((d / "last_reserved_ip.0").stat().st_mode) == 0o600


def test_reserve_is_exclusive(store: Store) -> None:
    assert store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    assert not store.reserve(ip("10.0.0.2"), "c2", "eth0", 3)
    assert (netdir(store) / "10.0.0.2").read_bytes() == b"c1\r\neth0"
    # A failed reserve must not move the round-robin hint.
    assert not (netdir(store) / "last_reserved_ip.3").exists()


def test_reserve_trims_container_id_like_the_reference(store: Store) -> None:
    store.reserve(ip("10.0.0.2"), "  c1 \n", "eth0", 0)
    assert (netdir(store) / "10.0.0.2").read_bytes() == b"c1\r\neth0"
    assert store.find_by_owner("c1", "eth0") == [ip("10.0.0.2")]


def test_ipv6_file_names_are_go_canonical(store: Store) -> None:
    store.reserve(ip("fd00:0:0:0:0:0:0:2"), "c1", "eth0", 1)
    assert "fd00::2" in files(store)
    assert (netdir(store) / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    assert ip_filename(ip("fd00:0:0:1:0:0:1:2")) == "fd00::1:0:0:1:2"
    assert ip_filename(ip("fd00:0:1:0:0:0:1:2")) == "fd00:0:1::1:2"
    assert ip_filename(ip("fd00:1:2:3:4:5:0:7")) == "fd00:1:2:3:4:5:0:7"
    # Go prints IPv4-mapped addresses in dotted form.
    assert ip_filename(ip("::ffff:10.0.0.5")) == "10.0.0.5"


@pytest.mark.parametrize(
    "name,expected",
    [
        ("10.0.0.2", "10.0.0.2"),
        ("fd00::2", "fd00::2"),
        ("lock", None),
        ("last_reserved_ip.0", None),
        ("fd00:0::2", None),
        ("FD00::2", None),
        ("10.0.0.02", None),
        ("fe80::1%eth0", None),
        ("::ffff:a00:5", None),
        (".10.0.0.2.swp", None),
    ],
)
def test_parse_ip_filename(name: str, expected: str | None) -> None:
    got = parse_ip_filename(name)
    assert (str(got) if got is not None else None) == expected


def test_all_reservations_skips_non_reservations(store: Store) -> None:
    store.reserve(ip("10.0.0.3"), "c1", "eth0", 0)
    store.reserve(ip("fd00::2"), "c1", "eth0", 1)
    write(store, "10.0.0.2", b"legacy")
    write(store, "notes.txt", b"c1\r\neth0")
    write(store, "fd00:0::9", b"c1\r\neth0")
    (netdir(store) / "10.0.0.7").mkdir()
    os.symlink("/etc/hostname", netdir(store) / "10.0.0.8")
    assert store.all_reservations() == [
        (ip("10.0.0.2"), "legacy", None),
        (ip("10.0.0.3"), "c1", "eth0"),
        (ip("fd00::2"), "c1", "eth0"),
    ]
    assert store.find_by_owner("c1", "eth0") == [ip("10.0.0.3"), ip("fd00::2")]


def test_all_reservations_tolerates_whitespace_like_the_reference(store: Store) -> None:
    write(store, "10.0.0.2", b"c1\r\neth0\n")
    assert store.all_reservations() == [(ip("10.0.0.2"), "c1", "eth0")]
    assert store.find_by_owner("c1", "eth0") == [ip("10.0.0.2")]


def test_reservations_unlocked_reads_as_the_store_does_and_writes_nothing(store: Store) -> None:
    errors: list[CniError] = []
    assert store.reservations_unlocked(errors) == [] and errors == []
    assert not netdir(store).exists()  # neither the directory nor the lock file made
    write(store, "10.0.0.2", b"c1\r\neth0")
    write(store, "10.0.0.3", b"c1 \r\n eth1\n")  # inner whitespace is part of the owner
    write(store, "10.0.0.4", b"legacy")
    write(store, "10.0.0.5", b"")  # what the reference leaves when killed between create and write
    write(store, "notes.txt", b"c1\r\neth0")
    (netdir(store) / "10.0.0.7").mkdir()
    os.symlink("/etc/hostname", netdir(store) / "10.0.0.8")
    before = files(store)
    unlocked = store.reservations_unlocked(errors)
    assert files(store) == before and errors == []
    assert unlocked == [
        (ip("10.0.0.2"), "c1", "eth0"),
        (ip("10.0.0.3"), "c1 ", " eth1"),
        (ip("10.0.0.4"), "legacy", None),
        (ip("10.0.0.5"), "", None),
    ]
    assert store.all_reservations() == unlocked


def test_reservations_unlocked_of_a_file_where_the_directory_would_be(tmp_path: Path) -> None:
    (tmp_path / NET).write_bytes(b"not a store")
    errors: list[CniError] = []
    assert Store(tmp_path, NET).reservations_unlocked(errors) == [] and errors == []


def test_find_by_owner_includes_legacy_files(store: Store) -> None:
    store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    store.reserve(ip("10.0.0.3"), "c1", "eth1", 0)
    write(store, "10.0.0.4", b"c1")
    store.reserve(ip("10.0.0.5"), "c2", "eth0", 0)
    assert store.find_by_owner("c1", "eth0") == [ip("10.0.0.2"), ip("10.0.0.4")]
    assert store.find_by_owner("c3", "eth0") == []


def test_release_by_owner_prefers_current_format(store: Store) -> None:
    store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    store.reserve(ip("fd00::2"), "c1", "eth0", 1)
    write(store, "10.0.0.4", b"c1")
    store.reserve(ip("10.0.0.5"), "c1", "eth1", 0)
    assert store.release_by_owner("c1", "eth0") == [ip("10.0.0.2"), ip("fd00::2")]
    assert set(reserved(store)) == {"10.0.0.4", "10.0.0.5"}
    # Nothing in the current format left: the legacy file is this owner's.
    assert store.release_by_owner("c1", "eth0") == [ip("10.0.0.4")]
    assert store.release_by_owner("c1", "eth0") == []
    assert set(reserved(store)) == {"10.0.0.5"}
    assert "last_reserved_ip.0" in files(store) and "lock" in files(store)


def test_legacy_id_equal_to_an_ip_never_touches_last_reserved(store: Store) -> None:
    store.reserve(ip("10.0.0.3"), "x", "eth0", 0)
    assert store.release_by_owner("10.0.0.3", "eth0") == []
    assert "last_reserved_ip.0" in files(store)


def test_release_single_ip(store: Store) -> None:
    store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    assert store.release(ip("10.0.0.2"))
    assert not store.release(ip("10.0.0.2"))


def test_last_reserved(store: Store) -> None:
    assert store.last_reserved(0) is None
    store.reserve(ip("10.0.0.9"), "c1", "eth0", 2)
    assert store.last_reserved(2) == ip("10.0.0.9")
    assert store.last_reserved(0) is None
    write(store, "last_reserved_ip.0", b"garbage")
    assert store.last_reserved(0) is None


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", "/abs", "x\0y"])
def test_store_refuses_escaping_network_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(CniError) as info:
        Store(tmp_path, name)
    assert info.value.code == IPAM_STORE_FAILURE


def test_store_refuses_empty_data_dir() -> None:
    with pytest.raises(CniError) as info:
        Store("", NET)
    assert info.value.code == IPAM_STORE_FAILURE


def test_io_error_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    s = Store(blocker, NET)
    with pytest.raises(CniError) as info:
        s.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    assert info.value.code == IPAM_STORE_FAILURE
    assert str(blocker / NET) in info.value.msg


def test_failed_hint_write_undoes_the_reservation(store: Store) -> None:
    (netdir(store) / "last_reserved_ip.0").mkdir(parents=True)
    with pytest.raises(CniError) as info:
        store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    assert info.value.code == IPAM_STORE_FAILURE
    assert "last_reserved_ip.0" in info.value.msg
    assert reserved(store) == {}


def test_lock_is_exclusive_and_reentrant(store: Store) -> None:
    with store.lock():
        with store.lock():
            store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
        fd = os.open(netdir(store) / "lock", os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(netdir(store) / "lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# == allocate: round robin ==================================================


def test_first_allocation_skips_gateway(store: Store) -> None:
    [a] = allocate(store, [rs(SMALL)], "c1", "eth0", [])
    assert a == Allocation(ip("10.0.0.2"), 29, ip("10.0.0.1"), 0)
    assert reserved(store) == {"10.0.0.2": b"c1\r\neth0"}
    assert (netdir(store) / "last_reserved_ip.0").read_bytes() == b"10.0.0.2"


def test_sequential_then_exhausted(store: Store) -> None:
    got = [str(allocate(store, [rs(SMALL)], f"c{i}", "eth0")[0].ip) for i in range(5)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c9", "eth0")
    assert err(info) == (
        IPAM_EXHAUSTED,
        "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.1-10.0.0.6",
    )


def test_exhaustion_message_from_brief(store: Store) -> None:
    s = rs({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.2", "rangeEnd": "10.0.0.3"})
    allocate(store, [s], "a", "eth0")
    allocate(store, [s], "b", "eth0")
    with pytest.raises(CniError) as info:
        allocate(store, [s], "c", "eth0")
    assert err(info) == (
        IPAM_EXHAUSTED,
        "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.2-10.0.0.3",
    )


def test_round_robin_does_not_reuse_a_freed_address_at_once(store: Store) -> None:
    allocate(store, [rs(SMALL)], "c1", "eth0")
    allocate(store, [rs(SMALL)], "c2", "eth0")
    release(store, "c1", "eth0")
    assert ips_of(allocate(store, [rs(SMALL)], "c3", "eth0")) == ["10.0.0.4"]


def test_round_robin_wraps_around(store: Store) -> None:
    for i in range(5):
        allocate(store, [rs(SMALL)], f"c{i}", "eth0")
    release(store, "c1", "eth0")  # 10.0.0.3
    release(store, "c0", "eth0")  # 10.0.0.2
    # last is .6 (rangeEnd): wrap to rangeStart .1, the gateway, then .2.
    assert ips_of(allocate(store, [rs(SMALL)], "n1", "eth0")) == ["10.0.0.2"]
    assert ips_of(allocate(store, [rs(SMALL)], "n2", "eth0")) == ["10.0.0.3"]


def test_last_reserved_itself_is_tried_last(store: Store) -> None:
    for i in range(5):
        allocate(store, [rs(SMALL)], f"c{i}", "eth0")
    write(store, "last_reserved_ip.0", b"10.0.0.4")
    release(store, "c2", "eth0")  # frees .4, the hint itself
    assert ips_of(allocate(store, [rs(SMALL)], "n", "eth0")) == ["10.0.0.4"]


def test_hint_outside_the_set_restarts_at_range_start(store: Store) -> None:
    write(store, "last_reserved_ip.0", b"192.168.1.1")
    assert ips_of(allocate(store, [rs(SMALL)], "c1", "eth0")) == ["10.0.0.2"]
    write(store, "last_reserved_ip.0", b"not an ip")
    assert ips_of(allocate(store, [rs(SMALL)], "c2", "eth0")) == ["10.0.0.3"]


def test_hint_is_per_range_set_index(store: Store) -> None:
    write(store, "last_reserved_ip.1", b"10.0.0.4")
    assert ips_of(allocate(store, [rs(SMALL)], "c1", "eth0")) == ["10.0.0.2"]


def test_moves_to_next_range_and_wraps(store: Store) -> None:
    s = rs(
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.11"},
        {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.1", "rangeEnd": "10.0.1.2"},
    )
    got = [allocate(store, [s], f"c{i}", "eth0")[0] for i in range(3)]
    # Range 1's gateway (10.0.1.1, its network+1) is skipped.
    assert [str(a.ip) for a in got] == ["10.0.0.10", "10.0.0.11", "10.0.1.2"]
    assert [str(a.gateway) for a in got] == ["10.0.0.1", "10.0.0.1", "10.0.1.1"]
    assert all(a.prefixlen == 24 for a in got)
    release(store, "c0", "eth0")
    assert ips_of(allocate(store, [s], "c3", "eth0")) == ["10.0.0.10"]
    with pytest.raises(CniError, match="no IP addresses available in range set: 10.0.0.10-10.0.0.11,10.0.1.1-10.0.1.2"):
        allocate(store, [s], "c4", "eth0")


def test_gateway_in_the_middle_is_never_handed_out(store: Store) -> None:
    s = rs({"subnet": "10.0.0.0/29", "gateway": "10.0.0.3"})
    got = {str(allocate(store, [s], f"c{i}", "eth0")[0].ip) for i in range(5)}
    assert got == {"10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
    with pytest.raises(CniError) as info:
        allocate(store, [s], "x", "eth0")
    assert info.value.code == IPAM_EXHAUSTED
    assert "10.0.0.3" not in reserved(store)


def test_range_with_only_the_gateway_is_exhausted_not_endless(store: Store) -> None:
    s = rs({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.1", "rangeEnd": "10.0.0.1"})
    with pytest.raises(CniError) as info:
        allocate(store, [s], "c1", "eth0")
    assert info.value.code == IPAM_EXHAUSTED


def test_ipv6_all_ones_address_is_allocatable(store: Store) -> None:
    s = rs({"subnet": "fd00:99::/126"})
    got = [allocate(store, [s], f"c{i}", "eth0")[0] for i in range(2)]
    assert [str(a.ip) for a in got] == ["fd00:99::2", "fd00:99::3"]
    assert got[0].prefixlen == 126 and got[0].gateway == ip("fd00:99::1")
    assert set(reserved(store)) == {"fd00:99::2", "fd00:99::3"}
    with pytest.raises(CniError) as info:
        allocate(store, [s], "c9", "eth0")
    assert err(info) == (
        IPAM_EXHAUSTED,
        "failed to allocate for range 0: no IP addresses available in range set: fd00:99::1-fd00:99::3",
    )


def test_ipv6_wraps_at_the_top_of_the_address_space(store: Store) -> None:
    s = rs({"subnet": "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124"})
    write(store, "last_reserved_ip.0", b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")
    assert ips_of(allocate(store, [s], "c1", "eth0")) == ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    assert ips_of(allocate(store, [s], "c2", "eth0")) == ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff2"]


def test_dual_stack_one_address_per_set(store: Store) -> None:
    sets = [rs(SMALL), parse_range_set([{"subnet": "fd00::/64"}], "ipam.ranges[1]")]
    got = allocate(store, sets, "c1", "eth0")
    assert got == [
        Allocation(ip("10.0.0.2"), 29, ip("10.0.0.1"), 0),
        Allocation(ip("fd00::2"), 64, ip("fd00::1"), 1),
    ]
    assert (netdir(store) / "last_reserved_ip.0").read_bytes() == b"10.0.0.2"
    assert (netdir(store) / "last_reserved_ip.1").read_bytes() == b"fd00::2"


def test_no_range_sets_allocates_nothing(store: Store) -> None:
    assert allocate(store, [], "c1", "eth0") == []


# == allocate: requested IPs =================================================


def test_requested_ip_is_used_and_moves_the_hint(store: Store) -> None:
    [a] = allocate(store, [rs(SMALL)], "c1", "eth0", [ip("10.0.0.5")])
    assert a == Allocation(ip("10.0.0.5"), 29, ip("10.0.0.1"), 0)
    assert (netdir(store) / "last_reserved_ip.0").read_bytes() == b"10.0.0.5"
    assert ips_of(allocate(store, [rs(SMALL)], "c2", "eth0")) == ["10.0.0.6"]


def test_requested_gateway(store: Store) -> None:
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c1", "eth0", [ip("10.0.0.1")])
    assert err(info) == (IPAM_CONFLICT, "failed to allocate for range 0: requested ip 10.0.0.1 is subnet's gateway")
    assert reserved(store) == {}


def test_requested_ip_taken(store: Store) -> None:
    allocate(store, [rs(SMALL)], "c1", "eth0")
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c2", "eth0", [ip("10.0.0.2")])
    assert err(info) == (
        IPAM_CONFLICT,
        "failed to allocate for range 0: requested IP address 10.0.0.2 is not available in range set 10.0.0.1-10.0.0.6",
    )


def test_requested_ip_outside_every_set_rolls_back(store: Store) -> None:
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c1", "eth0", [ip("192.168.0.9")])
    assert err(info) == (IPAM_CONFLICT, "failed to allocate all requested IPs: 192.168.0.9")
    assert reserved(store) == {}


def test_requested_ip_in_subnet_but_outside_range_is_left_over(store: Store) -> None:
    s = rs({"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"})
    with pytest.raises(CniError) as info:
        allocate(store, [s], "c1", "eth0", [ip("10.0.0.5")])
    assert err(info) == (IPAM_CONFLICT, "failed to allocate all requested IPs: 10.0.0.5")


def test_two_requested_for_one_set(store: Store) -> None:
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c1", "eth0", [ip("10.0.0.3"), ip("10.0.0.4"), ip("10.9.9.9")])
    assert err(info) == (IPAM_CONFLICT, "failed to allocate all requested IPs: 10.0.0.4 10.9.9.9")
    assert reserved(store) == {}


def test_requested_repeats_collapse_and_mapped_fold(store: Store) -> None:
    got = allocate(store, [rs(SMALL)], "c1", "eth0", [ip("10.0.0.3"), ip("::ffff:10.0.0.3")])
    assert ips_of(got) == ["10.0.0.3"]


def test_requested_for_second_set_only(store: Store) -> None:
    sets = [rs(SMALL), parse_range_set([{"subnet": "fd00::/64"}], "ipam.ranges[1]")]
    got = allocate(store, sets, "c1", "eth0", [ip("fd00::99")])
    assert ips_of(got) == ["10.0.0.2", "fd00::99"]


def test_requested_ip_bypasses_the_duplicate_check_like_the_reference(store: Store) -> None:
    allocate(store, [rs(SMALL)], "c1", "eth0")
    assert ips_of(allocate(store, [rs(SMALL)], "c1", "eth0", [ip("10.0.0.4")])) == ["10.0.0.4"]


# == allocate: duplicates and rollback ======================================


def test_duplicate_allocation(store: Store) -> None:
    allocate(store, [rs(SMALL)], "c1", "eth0")
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c1", "eth0")
    assert err(info) == (
        IPAM_CONFLICT,
        "failed to allocate for range 0: 10.0.0.2 has been allocated to c1, duplicate allocation is not allowed",
    )
    # Another interface of the same container is another attachment.
    assert ips_of(allocate(store, [rs(SMALL)], "c1", "eth1")) == ["10.0.0.3"]


def test_duplicate_detection_honours_legacy_files(store: Store) -> None:
    write(store, "10.0.0.4", b"c1")
    with pytest.raises(CniError, match="10.0.0.4 has been allocated to c1, duplicate"):
        allocate(store, [rs(SMALL)], "c1", "eth0")


def test_holding_an_address_elsewhere_is_not_a_duplicate(store: Store) -> None:
    store.reserve(ip("10.5.0.2"), "c1", "eth0", 0)
    assert ips_of(allocate(store, [rs(SMALL)], "c1", "eth0")) == ["10.0.0.2"]


def test_failure_in_a_later_set_releases_earlier_ones(store: Store) -> None:
    full = rs({"subnet": "10.1.0.0/30"})
    allocate(store, [full], "other", "eth0")
    sets = [rs(SMALL), full]
    with pytest.raises(CniError) as info:
        allocate(store, sets, "c1", "eth0")
    assert err(info) == (
        IPAM_EXHAUSTED,
        "failed to allocate for range 1: no IP addresses available in range set: 10.1.0.1-10.1.0.2",
    )
    assert reserved(store) == {"10.1.0.2": b"other\r\neth0"}


def test_rollback_keeps_what_this_call_did_not_reserve(store: Store) -> None:
    # The reference's rollback releases every reservation of the container;
    # ours releases only what the failed call itself reserved.
    second = parse_range_set([{"subnet": "fd00::/64"}], "ipam.ranges[1]")
    store.reserve(ip("fd00::7"), "c1", "eth0", 1)
    with pytest.raises(CniError, match="range 1: fd00::7 has been allocated to c1"):
        allocate(store, [rs(SMALL), second], "c1", "eth0")
    assert reserved(store) == {"fd00::7": b"c1\r\neth0"}


def test_rollback_on_unexpected_exception(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store.reserve

    def flaky(ip_: IPAddress, cid: str, ifname: str, idx: int) -> bool:
        if idx == 1:
            raise RuntimeError("boom")
        return real(ip_, cid, ifname, idx)

    monkeypatch.setattr(store, "reserve", flaky)
    sets = [rs(SMALL), parse_range_set([{"subnet": "fd00::/64"}], "ipam.ranges[1]")]
    with pytest.raises(RuntimeError):
        allocate(store, sets, "c1", "eth0")
    assert reserved(store) == {}


def test_store_failure_keeps_its_code_and_gets_the_range_prefix(store: Store) -> None:
    (netdir(store) / "last_reserved_ip.0").mkdir(parents=True)
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c1", "eth0")
    assert info.value.code == IPAM_STORE_FAILURE
    assert info.value.msg.startswith("failed to allocate for range 0: host-local store: cannot ")
    assert reserved(store) == {}


def test_rollback_failure_is_reported(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_release(ip_: IPAddress) -> bool:
        raise CniError(IPAM_STORE_FAILURE, f"cannot remove {ip_}")

    monkeypatch.setattr(store, "release", broken_release)
    with pytest.raises(CniError) as info:
        allocate(store, [rs(SMALL)], "c1", "eth0", [ip("10.9.9.9")])
    assert err(info) == (IPAM_CONFLICT, "failed to allocate all requested IPs: 10.9.9.9")
    assert "rollback failed, reservations leaked: cannot remove 10.0.0.2" in info.value.details


def _allocate_in_child(data_dir: str, cid: str, queue: multiprocessing.Queue[str]) -> None:
    s = Store(data_dir, NET)
    sets = [parse_range_set([{"subnet": "10.0.0.0/24"}], "r"), parse_range_set([{"subnet": "fd00::/64"}], "r")]
    queue.put(" ".join(str(a.ip) for a in allocate(s, sets, cid, "eth0")))


def test_concurrent_processes_get_distinct_addresses(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_child, args=(str(tmp_path), f"c{i}", queue)) for i in range(12)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    v4 = [r.split()[0] for r in results]
    v6 = [r.split()[1] for r in results]
    assert len(set(v4)) == 12 and len(set(v6)) == 12
    assert sorted(v4, key=lambda s: int(ip(s))) == [f"10.0.0.{i}" for i in range(2, 14)]


# == release / gc / status / check ==========================================


def test_release_is_idempotent(store: Store) -> None:
    sets = [rs(SMALL), parse_range_set([{"subnet": "fd00::/64"}], "ipam.ranges[1]")]
    allocate(store, sets, "c1", "eth0")
    assert [str(x) for x in release(store, "c1", "eth0")] == ["10.0.0.2", "fd00::2"]
    assert release(store, "c1", "eth0") == []
    assert release(Store(netdir(store).parent, "never-used"), "c1", "eth0") == []


def test_gc_releases_only_invalid_attachments(store: Store) -> None:
    store.reserve(ip("10.0.0.2"), "keep", "eth0", 0)
    store.reserve(ip("10.0.0.3"), "keep", "eth1", 0)  # eth1 is not valid
    store.reserve(ip("10.0.0.4"), "gone", "eth0", 0)
    write(store, "10.0.0.5", b"keep")  # legacy, container still valid
    write(store, "10.0.0.6", b"gone")  # legacy, container gone
    write(store, "10.0.0.7", b"")  # crashed mid-write: no owner
    released, errors = gc(store, {("keep", "eth0")})
    assert errors == []
    assert [str(x) for x in released] == ["10.0.0.3", "10.0.0.4", "10.0.0.6", "10.0.0.7"]
    assert set(reserved(store)) == {"10.0.0.2", "10.0.0.5"}
    assert {"lock", "last_reserved_ip.0"} <= files(store)


def test_gc_keeps_going_after_errors(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in (2, 3, 4):
        store.reserve(ip(f"10.0.0.{n}"), f"c{n}", "eth0", 0)
    real_release = store.release
    real_read = store._read

    def release_fails_on_3(ip_: IPAddress) -> bool:
        if str(ip_) == "10.0.0.3":
            raise CniError(IPAM_STORE_FAILURE, "cannot remove 10.0.0.3")
        return real_release(ip_)

    def read_fails_on_4(path: str) -> str | None:
        if path.endswith("/10.0.0.4"):
            raise CniError(IPAM_STORE_FAILURE, f"cannot read {path}")
        return real_read(path)

    monkeypatch.setattr(store, "release", release_fails_on_3)
    monkeypatch.setattr(store, "_read", read_fails_on_4)
    released, errors = gc(store, set())
    assert [str(x) for x in released] == ["10.0.0.2"]
    assert sorted(e.msg for e in errors) == ["cannot read " + str(netdir(store) / "10.0.0.4"), "cannot remove 10.0.0.3"]


def test_gc_matches_trimmed_ids(store: Store) -> None:
    store.reserve(ip("10.0.0.2"), "c1", "eth0", 0)
    assert gc(store, {(" c1 ", "eth0")}) == ([], [])


def test_has_free_address(store: Store) -> None:
    s = rs({"subnet": "10.0.0.0/30"})  # only 10.0.0.2 is allocatable
    assert has_free_address(store, s)
    store.reserve(ip("10.9.0.1"), "elsewhere", "eth0", 0)
    store.reserve(ip("10.0.0.1"), "squatter", "eth0", 0)  # the gateway: not an allocatable address
    assert has_free_address(store, s)
    allocate(store, [s], "c1", "eth0")
    assert not has_free_address(store, s)
    release(store, "c1", "eth0")
    assert has_free_address(store, s)


def test_has_free_address_agrees_with_allocate(store: Store) -> None:
    s = rs(
        {"subnet": "10.0.0.0/29", "gateway": "10.0.0.4"},
        {"subnet": "10.0.1.0/24", "rangeStart": "10.0.1.5", "rangeEnd": "10.0.1.6"},
    )
    n = 0
    while has_free_address(store, s):
        allocate(store, [s], f"c{n}", "eth0")
        n += 1
    assert n == 5 + 2
    with pytest.raises(CniError) as info:
        allocate(store, [s], "x", "eth0")
    assert info.value.code == IPAM_EXHAUSTED


def test_has_free_address_on_a_huge_set_is_cheap(store: Store) -> None:
    s = parse_range_set([{"subnet": "fd00::/64"}], "r")
    store.reserve(ip("fd00::2"), "c1", "eth0", 0)
    assert has_free_address(store, s)


def test_check_passes(store: Store) -> None:
    got = allocate(store, [rs(SMALL)], "c1", "eth0")
    check(store, "c1", "eth0", [got[0].ip])
    check(store, "c1", "eth0", [])


def test_check_accepts_legacy_files(store: Store) -> None:
    write(store, "10.0.0.2", b"c1")
    check(store, "c1", "eth0", [ip("10.0.0.2")])


def test_check_missing_reservation(store: Store) -> None:
    with pytest.raises(CniError) as info:
        check(store, "c1", "eth0", [ip("10.0.0.2")])
    assert info.value.code == CHECK_FAILED
    assert info.value.msg == (
        f"host-local: 10.0.0.2 is not reserved in {store.directory} (expected container c1 interface eth0)"
    )
    with pytest.raises(CniError) as info:
        check(store, "c1", "eth0", [])
    assert info.value.code == CHECK_FAILED
    assert "no address reserved for container c1 interface eth0" in info.value.msg


def test_check_reservation_held_by_someone_else(store: Store) -> None:
    allocate(store, [rs(SMALL)], "c1", "eth0")
    with pytest.raises(CniError) as info:
        check(store, "c1", "eth1", [ip("10.0.0.2")])
    assert info.value.code == CHECK_FAILED
    assert "10.0.0.2 is reserved by container c1 interface eth0, not by container c1 interface eth1" in info.value.msg

