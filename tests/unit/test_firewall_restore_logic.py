"""The restore logic (firewall/restore.py) through the in-memory driver (tests/firewall_memory.py):
what the kernel lost is put back for every recorded attachment and the shared resources they
use, a second run changes nothing, a refused group is named while the others are restored,
and an ADD whose shared resources were lost repairs them."""

from __future__ import annotations

import json
from pathlib import Path

from cni_bridge.errors import CniError
from cni_bridge.firewall import orchestrate
from cni_bridge.firewall.driver import FirewallDriver
from cni_bridge.firewall.restore import restore, summary
from tests.firewall_memory import HOSTPORT_CHAIN, MemoryDriver
from tests.unit.test_firewall_orchestrate import WEB, drivers_of, rules

import pytest

pytestmark = pytest.mark.unit


def test_restore_puts_back_everything_lost_and_a_second_run_changes_nothing(tmp_path: Path) -> None:
    driver = MemoryDriver()
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    orchestrate.install(driver, rules("b", ips=(("10.1.0.3", 24),)), str(tmp_path))
    before = {unit: set(items) for unit, items in driver.kernel.items()}
    driver.kernel = {unit: set() for unit in driver.kernel}
    reports, problems = restore(str(tmp_path), drivers_of(driver))
    assert problems == [] and driver.kernel == before
    assert {(r.unit, r.attachments) for r in reports} == {("4", 2), ("6", 1)}
    assert sum(r.restored_items for r in reports) == sum(len(items) for items in before.values())
    assert [op for op, _ in driver.transactions[-2:]] == ["restore", "restore"]  # one per unit
    reports, problems = restore(str(tmp_path), drivers_of(driver))
    assert driver.kernel == before and all(r.restored_items == 0 for r in reports)
    out, errors = summary(str(tmp_path), reports, problems)
    assert errors == [] and all("nothing missing" in line for line in out)


def test_a_refused_group_is_named_and_the_others_are_restored(tmp_path: Path) -> None:
    driver = MemoryDriver(units=("4",))
    orchestrate.install(driver, rules("a", ips=(("10.1.0.2", 24),)), str(tmp_path))
    orchestrate.install(driver, rules("b", WEB, ips=(("10.1.0.3", 24),)), str(tmp_path))
    lost_a = {("masq", "n1", "a", "eth0", "10.1.0.2")}
    driver.kernel["4"] -= lost_a | {HOSTPORT_CHAIN, ("dnat", "n1", "b", "eth0", "tcp", 8080)}
    # The kernel refuses the shared hostport chain; b's DNAT needs it.
    real_restore = driver.restore

    def refusing_hostport(unit: str, groups: object, picked: object) -> list[int]:
        if any(HOSTPORT_CHAIN in groups[i] for i in picked):  # type: ignore[index, attr-defined]
            raise CniError(109, "hostport refused")
        return real_restore(unit, groups, picked)  # type: ignore[arg-type]
    driver.restore = refusing_hostport  # type: ignore[method-assign]
    reports, problems = restore(str(tmp_path), drivers_of(driver))
    failures = [line for r in reports for line in r.failures]
    assert problems == []
    assert any("shared firewall rules hostport" in line and "hostport refused" in line for line in failures)
    assert any("container b ifname eth0 (network n1)" in line for line in failures)
    assert not any("container a " in line for line in failures)
    assert lost_a <= driver.kernel["4"]


def test_an_unknown_driver_is_named_per_attachment(tmp_path: Path) -> None:
    driver = MemoryDriver()
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    record = next((tmp_path / "attachments").iterdir())
    doc = json.loads(record.read_text())
    record.write_text(json.dumps(dict(doc, driver="gone")))

    def resolve(name: str) -> FirewallDriver:
        if name == "gone":
            raise CniError(109, "unknown firewall driver 'gone'")
        return driver
    reports, problems = restore(str(tmp_path), resolve)
    assert reports == [] and problems == ["container a ifname eth0 (network n1): unknown firewall driver 'gone'"]


def test_an_install_repairs_shared_resources_it_would_build_on(tmp_path: Path) -> None:
    driver = MemoryDriver()
    orchestrate.install(driver, rules("a", WEB), str(tmp_path))
    driver.kernel["4"].discard(HOSTPORT_CHAIN)
    driver.kernel["4"].discard(("accept", "br0"))
    orchestrate.install(driver, rules("b", ips=(("10.1.0.3", 24),)), str(tmp_path))
    assert ("accept", "br0") in driver.kernel["4"]  # b relies on its bridge's accept
    assert HOSTPORT_CHAIN not in driver.kernel["4"]  # but publishes no port: restore's job
