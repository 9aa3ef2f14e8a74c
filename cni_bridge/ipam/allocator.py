"""host-local allocation on top of the Store: ADD, DEL, CHECK, GC and STATUS.

allocate() follows the reference's algorithm (`backend/allocator/allocator.go`
and `main.go` cmdAdd) so that addresses come out in the same order whichever
implementation serves a network. It differs on purpose in two places: the lock is
held across all range sets, so an ADD is atomic against other ADDs, and a failure
releases exactly the addresses this call reserved (the reference releases every
reservation of the container, including ones it did not make).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

from ..errors import (
    CHECK_FAILED,
    IPAM_CONFLICT,
    IPAM_EXHAUSTED,
    CniError,
)
from ..records import record
from .ranges import IPRange, RangeSet, canonical_ip

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .ranges import IPAddress
from .store import Store


@record(frozen=True)
class Allocation:
    """One address handed out from range set range_set_index."""

    ip: IPAddress
    prefixlen: int
    gateway: IPAddress | None
    range_set_index: int


def _candidates(range_set: RangeSet, last: IPAddress | None) -> Iterator[tuple[IPAddress, IPRange]]:
    """Every allocatable address of the set once, in the reference's round-robin order.

    Starts just after `last` when the set holds it, else at rangeStart of the
    first range; runs to each range's end, moves on to the next range and wraps,
    ending with `last` itself. Each range's own gateway is skipped.
    """
    ranges = range_set.ranges
    start: tuple[int, IPAddress]
    hint = range_set.range_for(last) if last is not None else None
    if last is not None and hint is not None:
        start = _next_position(ranges, ranges.index(hint), last)
    else:
        start = (0, ranges[0].range_start)
    pos = start
    while True:
        idx, ip = pos
        if ip != ranges[idx].gateway:
            yield ip, ranges[idx]
        pos = _next_position(ranges, idx, ip)
        if pos == start:
            return


def _next_position(ranges: Sequence[IPRange], idx: int, ip: IPAddress) -> tuple[int, IPAddress]:
    if ip == ranges[idx].range_end:
        nxt = (idx + 1) % len(ranges)
        return nxt, ranges[nxt].range_start
    return idx, ip + 1


def _unique(ips: Sequence[IPAddress]) -> list[IPAddress]:
    # The reference keys requested IPs by string, so repeats collapse into one.
    seen: set[IPAddress] = set()
    out: list[IPAddress] = []
    for ip in map(canonical_ip, ips):
        if ip not in seen:
            seen.add(ip)
            out.append(ip)
    return out


def _allocate_one(
    store: Store,
    range_set: RangeSet,
    index: int,
    container_id: str,
    ifname: str,
    requested: IPAddress | None,
) -> Allocation:
    if requested is not None:
        r = range_set.range_for(requested)
        if r is None:
            raise AssertionError("allocate() only passes a requested IP the set contains")
        if requested == r.gateway:
            raise CniError(IPAM_CONFLICT, f"requested ip {requested} is subnet's gateway")
        if not store.reserve(requested, container_id, ifname, index):
            raise CniError(
                IPAM_CONFLICT,
                f"requested IP address {requested} is not available in range set {range_set}",
            )
        return Allocation(requested, r.subnet.prefixlen, r.gateway, index)

    # The spec forbids two ADDs for one attachment; an address already in this
    # set for the same owner means the runtime skipped a DEL.
    for owned in store.find_by_owner(container_id, ifname):
        if range_set.contains(owned):
            raise CniError(
                IPAM_CONFLICT,
                f"{owned} has been allocated to {container_id}, duplicate allocation is not allowed",
            )
    for ip, r in _candidates(range_set, store.last_reserved(index)):
        if store.reserve(ip, container_id, ifname, index):
            return Allocation(ip, r.subnet.prefixlen, r.gateway, index)
    raise CniError(IPAM_EXHAUSTED, f"no IP addresses available in range set: {range_set}")


def allocate(
    store: Store,
    range_sets: Sequence[RangeSet],
    container_id: str,
    ifname: str,
    requested: Sequence[IPAddress] = (),
) -> list[Allocation]:
    """Reserve one address per range set for (container_id, ifname), all or nothing.

    A requested address is used by the first set (in order) that contains it;
    every requested address must be used by some set.
    """
    pending = _unique(requested)
    allocations: list[Allocation] = []
    with store.lock():
        try:
            for index, range_set in enumerate(range_sets):
                wanted = next((ip for ip in pending if range_set.contains(ip)), None)
                if wanted is not None:
                    pending.remove(wanted)
                try:
                    allocations.append(_allocate_one(store, range_set, index, container_id, ifname, wanted))
                except CniError as exc:
                    raise CniError(exc.code, f"failed to allocate for range {index}: {exc.msg}", exc.details) from exc
            if pending:
                raise CniError(
                    IPAM_CONFLICT,
                    "failed to allocate all requested IPs: " + " ".join(str(ip) for ip in pending),
                )
        except CniError as exc:
            failures = _rollback(store, allocations)
            if not failures:
                raise
            raise _with_leaks(exc, failures) from exc
        except BaseException:
            _rollback(store, allocations)
            raise
    return allocations


def _rollback(store: Store, allocations: Sequence[Allocation]) -> list[CniError]:
    failures: list[CniError] = []
    for a in allocations:
        try:
            store.release(a.ip)
        except CniError as exc:
            failures.append(exc)
    return failures


def _with_leaks(exc: CniError, failures: Sequence[CniError]) -> CniError:
    # The original failure stays the message; a leaked reservation must still be visible.
    leaked = "; ".join(f.msg for f in failures)
    details = f"{exc.details}; " if exc.details else ""
    return CniError(exc.code, exc.msg, f"{details}rollback failed, reservations leaked: {leaked}")


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    """Release everything (container_id, ifname) holds; nothing held is not an error."""
    return store.release_by_owner(container_id, ifname)


def _is_valid(container_id: str, ifname: str | None, valid: Collection[tuple[str, str]], valid_ids: set[str]) -> bool:
    if ifname is None:
        # A legacy file names no interface: keep it while any attachment of
        # that container is valid.
        return container_id in valid_ids
    return (container_id, ifname) in valid


def gc(store: Store, valid: Collection[tuple[str, str]]) -> tuple[list[IPAddress], list[CniError]]:
    """Release every reservation whose owner is not in valid (container ID, ifname) pairs.

    Keeps going past per-file failures and returns them, so one bad file does not
    keep every other leaked address reserved.
    """
    # Files hold the trimmed ID, so compare against trimmed IDs.
    wanted = {(cid.strip(), ifname) for cid, ifname in valid}
    wanted_ids = {cid for cid, _ in wanted}
    released: list[IPAddress] = []
    errors: list[CniError] = []
    with store.lock():
        try:
            store.remove_debris()
        except CniError as exc:
            errors.append(exc)
        for ip, cid, ifname in store.all_reservations(errors):
            if _is_valid(cid, ifname, wanted, wanted_ids):
                continue
            try:
                if store.release(ip):
                    released.append(ip)
            except CniError as exc:
                errors.append(exc)
    return released, errors


def _capacity(r: IPRange) -> int:
    return r.size() - (1 if r.gateway is not None and r.contains(r.gateway) else 0)


def has_free_address(store: Store, range_set: RangeSet) -> bool:
    """True if an ADD could get an address from range_set right now.

    Counts the set's reservations against its size instead of probing
    addresses, so the cost is one directory listing even for a full /64.
    """
    capacity = sum(_capacity(r) for r in range_set.ranges)
    used = 0
    with store.lock():
        for ip, _, _ in store.all_reservations():
            r = range_set.range_for(ip)
            # A file named after a gateway is not an address the allocator could hand out.
            if r is not None and ip != r.gateway:
                used += 1
    return used < capacity


def check(store: Store, container_id: str, ifname: str, ips: Sequence[IPAddress]) -> None:
    """Verify that each of ips is reserved for (container_id, ifname).

    With no ips, at least one reservation must exist, which is all the
    reference's CHECK verifies.
    """
    key_id = container_id.strip()
    with store.lock():
        holders = {ip: (cid, ifn) for ip, cid, ifn in store.all_reservations()}
    mine = {ip for ip, (cid, ifn) in holders.items() if cid == key_id and ifn in (ifname, None)}
    if not ips:
        if not mine:
            raise CniError(
                CHECK_FAILED,
                f"host-local: no address reserved for container {container_id} interface {ifname}"
                f" in {store.directory}",
            )
        return
    for ip in map(canonical_ip, ips):
        if ip in mine:
            continue
        holder = holders.get(ip)
        if holder is None:
            raise CniError(
                CHECK_FAILED,
                f"host-local: {ip} is not reserved in {store.directory}"
                f" (expected container {container_id} interface {ifname})",
            )
        cid, ifn = holder
        owner = f"container {cid} interface {ifn}" if ifn is not None else f"container {cid}"
        raise CniError(
            CHECK_FAILED,
            f"host-local: {ip} is reserved by {owner}, not by container {container_id} interface {ifname}"
            f" (in {store.directory})",
        )
