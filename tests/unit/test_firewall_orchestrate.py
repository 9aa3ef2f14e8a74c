"""The firewall orchestration, written once above the driver interface, tested without root
through an in-memory driver (tests/firewall_memory.py): all or nothing, shared resources
counted, teardown modes, repair of lost shared resources, CHECK, GC, and records kept by the
driver that wrote them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cni_bridge.errors import CHECK_FAILED, FIREWALL_FAILURE, PORT_CONFLICT, CniError
from cni_bridge.firewall import orchestrate
from cni_bridge.firewall.driver import FirewallDriver, Identity
from cni_bridge.firewall.model import AttachmentRules
from cni_bridge.firewall.portmap import PortMapping
from cni_bridge.firewall.state import Store, attachment_key
from tests.firewall_memory import HOSTPORT_CHAIN, MemoryDriver

pytestmark = pytest.mark.unit

WEB = PortMapping(8080, 80, "tcp")


def rules(cid: str, *ports: PortMapping, ips: tuple[tuple[str, int], ...] = (("10.1.0.2", 24), ("fd00::2", 64)),
          bridge: str = "br0") -> AttachmentRules:
    return AttachmentRules(network="n1", bridge=bridge, container_id=cid, ifname="eth0", ips=ips,
                           port_mappings=ports, ip_masq=True)


def who(cid: str) -> Identity:
    return Identity("n1", cid, "eth0")


def books(state_dir: Path) -> list[str]:
    """Every record file left, lock and generation aside."""
    return sorted(str(p.relative_to(state_dir)) for p in state_dir.rglob("*")
                  if p.is_file() and p.name not in ("lock", "generation"))


@pytest.fixture
def driver() -> MemoryDriver:
    return MemoryDriver()


def drivers_of(*known: MemoryDriver) -> orchestrate.Drivers:
    def resolve(name: str) -> FirewallDriver:
        return next(d for d in known if d.name == name)
    return resolve


def test_install_then_remove_leaves_nothing(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    assert ("dnat", "n1", "a", "eth0", "tcp", 8080) in driver.kernel["4"]
    assert HOSTPORT_CHAIN in driver.kernel["6"]
    assert books(tmp_path)
    orchestrate.remove(who("a"), str(tmp_path), drivers_of(driver))
    assert driver.kernel == {"4": set(), "6": set()}
    assert books(tmp_path) == []
    assert driver.transactions == [("add", "4"), ("add", "6"), ("delete", "4"), ("delete", "6")]


def test_the_undo_install_returns_is_the_removal(driver: MemoryDriver, tmp_path: Path) -> None:
    undo = orchestrate.install(driver, rules("a", WEB), str(tmp_path), drivers_of(driver))
    undo()
    assert driver.kernel == {"4": set(), "6": set()} and books(tmp_path) == []


def test_shared_resources_come_with_the_first_user_and_go_with_the_last(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a"), str(tmp_path))
    orchestrate.install(driver, rules("b"), str(tmp_path))
    orchestrate.remove(who("a"), str(tmp_path), drivers_of(driver))
    assert ("accept", "br0") in driver.kernel["4"], "b still uses the bridge's accepts"
    orchestrate.remove(who("b"), str(tmp_path), drivers_of(driver))
    assert driver.kernel == {"4": set(), "6": set()} and books(tmp_path) == []


def test_a_taken_host_port_is_refused_and_changes_nothing(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    before = {unit: set(items) for unit, items in driver.kernel.items()}
    records = books(tmp_path)
    with pytest.raises(CniError) as info:
        orchestrate.install(driver, rules("b", WEB), str(tmp_path))
    assert info.value.code == PORT_CONFLICT and "container a" in info.value.msg
    assert driver.kernel == before and books(tmp_path) == records


def test_a_refused_unit_undoes_the_units_before_it(driver: MemoryDriver, tmp_path: Path) -> None:
    driver.refuse["6"] = 1
    with pytest.raises(CniError) as info:
        orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    assert info.value.code == FIREWALL_FAILURE
    assert driver.kernel == {"4": set(), "6": set()} and books(tmp_path) == []
    # unit 4 went in and was deleted exactly; unit 6 was refused, then purged by listing
    assert driver.transactions == [("add", "4"), ("add", "6"), ("delete", "4"), ("purge", "6")]


def test_shared_resources_lost_from_the_kernel_are_repaired_on_the_next_install(
        driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    driver.kernel["4"].discard(HOSTPORT_CHAIN)  # somebody flushed it
    orchestrate.install(driver, rules("b", PortMapping(8081, 81, "tcp")), str(tmp_path))
    assert HOSTPORT_CHAIN in driver.kernel["4"]
    assert ("dnat", "n1", "b", "eth0", "tcp", 8081) in driver.kernel["4"]


def test_removal_falls_back_to_listing_when_the_kernel_lost_items(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    driver.kernel["4"].discard(("masq", "n1", "a", "eth0", "10.1.0.2"))
    orchestrate.remove(who("a"), str(tmp_path), drivers_of(driver))
    assert driver.kernel == {"4": set(), "6": set()} and books(tmp_path) == []
    assert ("purge", "4") in driver.transactions


def test_a_failed_removal_keeps_the_record_for_a_retry(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a"), str(tmp_path))
    driver.refuse["6"] = 2  # the exact delete and the listing both fail
    with pytest.raises(CniError):
        orchestrate.remove(who("a"), str(tmp_path), drivers_of(driver))
    assert driver.kernel["4"] == set(), "unit 4 went before unit 6 failed"
    orchestrate.remove(who("a"), str(tmp_path), drivers_of(driver))
    assert driver.kernel == {"4": set(), "6": set()} and books(tmp_path) == []
    assert driver.transactions.count(("delete", "4")) == 1, "the retry does not redo unit 4"


def test_check_names_what_the_kernel_lacks(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    orchestrate.check(driver, rules("a", WEB), str(tmp_path))
    driver.kernel["6"].discard(("accept", "br0"))
    with pytest.raises(CniError) as info:
        orchestrate.check(driver, rules("a", WEB), str(tmp_path))
    assert info.value.code == CHECK_FAILED and "accept" in info.value.msg and "IPv6" in info.value.msg


def test_check_notices_a_changed_config(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    with pytest.raises(CniError) as info:
        orchestrate.check(driver, rules("a", PortMapping(9090, 80, "tcp")), str(tmp_path))
    assert info.value.code == CHECK_FAILED and "differ" in info.value.msg
    with pytest.raises(CniError):
        orchestrate.check(driver, rules("never-added", WEB), str(tmp_path))


def test_gc_removes_what_is_not_valid_and_keeps_the_rest(driver: MemoryDriver, tmp_path: Path) -> None:
    for cid, port in (("a", 8080), ("b", 8081), ("c", 8082)):
        orchestrate.install(driver, rules(cid, PortMapping(port, 80, "tcp")), str(tmp_path))
    # A stray: in the kernel, tagged with this network, but with no record (a lost state dir).
    driver.kernel["4"].add(("masq", "n1", "lost", "eth0", "10.1.0.9"))
    problems = orchestrate.gc("n1", [("b", "eth0")], str(tmp_path), drivers_of(driver), sweep=[driver])
    assert problems == []
    owners = {i[2] for unit in driver.kernel.values() for i in unit if i[0] in ("masq", "dnat")}
    assert owners == {"b"}
    with Store(str(tmp_path)) as store:
        assert [att.container_id for _, att in store.attachments() if att] == ["b"]
        assert {claim.host_port for claim, _ in store.all_claims()} == {8081}


def test_gc_removes_shared_resources_whose_users_are_all_gone(driver: MemoryDriver, tmp_path: Path) -> None:
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    os.unlink(tmp_path / "attachments" / f"{attachment_key('n1', 'a', 'eth0')}.json")  # a crash, say
    assert orchestrate.gc("n1", [], str(tmp_path), drivers_of(driver), sweep=[driver]) == []
    assert driver.kernel == {"4": set(), "6": set()} and books(tmp_path) == []


def test_removal_uses_the_driver_that_installed(tmp_path: Path) -> None:
    first, second = MemoryDriver("first"), MemoryDriver("second")
    orchestrate.install(first, rules("a"), str(tmp_path))
    # The config now names another backend: DEL still goes to the one that holds the rules.
    orchestrate.remove(who("a"), str(tmp_path), drivers_of(first, second))
    assert first.kernel == {"4": set(), "6": set()} and second.transactions == []


def test_a_repeated_install_replaces_the_earlier_one_even_across_drivers(tmp_path: Path) -> None:
    first, second = MemoryDriver("first"), MemoryDriver("second")
    orchestrate.install(first, rules("a", WEB), str(tmp_path), drivers_of(first, second))
    orchestrate.install(second, rules("a", WEB), str(tmp_path), drivers_of(first, second))
    assert first.kernel == {"4": set(), "6": set()}
    assert ("dnat", "n1", "a", "eth0", "tcp", 8080) in second.kernel["4"]


def test_records_written_before_drivers_existed_are_removed_by_iptables(tmp_path: Path) -> None:
    """Format 1 (iptables chains and rules per family) reads as the iptables driver's items."""
    key = attachment_key("n1", "a", "eth0")
    (tmp_path / "attachments").mkdir(parents=True)
    (tmp_path / "attachments" / f"{key}.json").write_text(json.dumps({
        "format": 1, "network": "n1", "containerID": "a", "ifname": "eth0",
        "families": [{"family": 4, "chains": [["nat", "CNIBR-MASQ-1"]],
                      "rules": [["nat", "POSTROUTING", "-s 10.1.0.2/32 -j CNIBR-MASQ-1", False]], "shared": []}],
        "claims": []}))
    with Store(str(tmp_path)) as store:
        (_, att), = store.attachments()
    assert att is not None and att.driver == "iptables"
    assert att.units[0].unit == "4" and att.units[0].items == (
        ("chain", "nat", "CNIBR-MASQ-1"), ("rule", "nat", "POSTROUTING", "-s 10.1.0.2/32 -j CNIBR-MASQ-1", False))
    iptables_like = MemoryDriver("iptables")
    iptables_like.kernel["4"] = set(att.units[0].items)
    orchestrate.remove(who("a"), str(tmp_path), drivers_of(iptables_like))
    assert iptables_like.kernel["4"] == set() and books(tmp_path) == []
