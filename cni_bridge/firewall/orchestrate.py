"""Install, remove, check and collect an attachment's firewall, over any driver (driver.py).

Written once for every backend, this keeps the books in the state directory (state.py) and
decides what the driver does:

- ``install`` on ADD: all or nothing. The record is written before the kernel is touched, port
  claims are taken, shared resources are created by the first user; then one transaction per
  unit. If a unit fails, what was applied is taken out again (units already applied exactly,
  the failed one by listing, the rest only in the books). If the failure was caused by shared
  resources that others' records vouch for but the kernel lost (a flushed table, a firewall
  reload), they are put back and the install is tried once more.
- ``remove`` on DEL: by the record, with the driver that installed it, needing no namespace and
  no config; exact first, by listing if the kernel refuses the exact removal.
- ``check`` on CHECK, ``gc`` on GC.

``state_dir`` must be one directory for the whole host (network namespace): shared resources
and host ports belong to every network.
"""

from __future__ import annotations

from ..errors import CHECK_FAILED, FIREWALL_FAILURE, CniError
from .driver import Identity, Teardown, unit_name
from .portmap import claims as claims_of
from .state import Attachment, Installed, Store, attachment_key, is_recorded

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from .driver import FirewallDriver, Shared, UnitPlan
    from .model import AttachmentRules
    from .portmap import Claim

    Drivers = Callable[[str], FirewallDriver]


RESTORE_HINT = ("a firewall reload or flush took them; `cni-bridge restore` puts back the rules of every "
                "recorded attachment")


def _nothing() -> None:
    return None


def install(driver: FirewallDriver, rules: AttachmentRules, state_dir: str,
            drivers: Drivers | None = None) -> Callable[[], None]:
    """Install an attachment's firewall; all or nothing. Returns the undo (its removal).

    Raises CniError: INVALID_CONFIG for rules that cannot be expressed, PORT_CONFLICT (110)
    naming the holder when a host port is taken, FIREWALL_FAILURE (109) with the kernel's
    message when a transaction is refused; in every case the host is left as it was. A
    repeated ADD of the same attachment first removes what the earlier one installed.
    """
    plans = driver.plan(rules)
    claims = claims_of(rules)
    key = attachment_key(rules.network, rules.container_id, rules.ifname)
    if not plans and not claims and not is_recorded(state_dir, key):
        return _nothing
    resolve = drivers or _by_name(driver)
    with Store(state_dir) as store:
        old = store.load(key)
        if old is not None:
            _teardown(resolve(old.driver), store, old)
        _install_locked(driver, store, rules, key, plans, claims)

    def undo() -> None:
        remove(Identity(rules.network, rules.container_id, rules.ifname), state_dir, resolve)

    return undo


def _by_name(known: FirewallDriver) -> Drivers:
    def resolve(name: str) -> FirewallDriver:
        if name == known.name:
            return known
        from . import driver_named
        return driver_named(name)
    return resolve


def _install_locked(driver: FirewallDriver, store: Store, rules: AttachmentRules, key: str,
                    plans: Sequence[UnitPlan], claims: Sequence[Claim]) -> None:
    try:
        _attempt(driver, store, rules, key, plans, claims)
    except CniError as exc:
        if exc.code != FIREWALL_FAILURE or store.load(key) is not None or not _repair_shared(driver, store, key, plans):
            raise
        _attempt(driver, store, rules, key, plans, claims)


def _repair_shared(driver: FirewallDriver, store: Store, key: str, plans: Sequence[UnitPlan]) -> bool:
    """Put back the missing parts of shared resources others use; True if there were any."""
    repaired = False
    for plan in plans:
        reused = [store.definition(plan.unit, s.key) or s for s in plan.shared
                  if store.other_users(plan.unit, s.key, key)]
        fixes = driver.absent(plan.unit, reused) if reused else []
        if fixes:
            driver.add(plan.unit, (), fixes)
            repaired = True
    return repaired


def _attempt(driver: FirewallDriver, store: Store, rules: AttachmentRules, key: str,
             plans: Sequence[UnitPlan], claims: Sequence[Claim]) -> None:
    store.check_claims(claims, key)
    creates = {plan.unit: [s for s in plan.shared if not store.other_users(plan.unit, s.key, key)]
               for plan in plans}
    # What others created is checked as recorded: a rule text changed by an upgrade is no loss.
    reuses = {plan.unit: [store.definition(plan.unit, s.key) or s for s in plan.shared if s not in creates[plan.unit]]
              for plan in plans}
    att = Attachment(driver.name, rules.network, rules.container_id, rules.ifname,
                     tuple(Installed(p.unit, p.items, tuple(s.key for s in p.shared)) for p in plans),
                     tuple(claims))
    # Recorded before the kernel is touched: a crash leaves a record without rules, which
    # DEL's listing handles, never rules without a record.
    store.save(att)
    try:
        store.take_claims(claims, att)
        for plan in plans:
            for resource in plan.shared:
                store.add_user(plan.unit, resource, key, created=resource in creates[plan.unit])
    except CniError:
        _teardown(driver, store, att, {plan.unit: Teardown.RECORDS_ONLY for plan in plans})
        raise
    done = 0
    try:
        for plan in plans:
            driver.add(plan.unit, plan.items, creates[plan.unit], reuses[plan.unit])
            done += 1
    except CniError as exc:
        modes = {plan.unit: (Teardown.EXACT if i < done else Teardown.LISTING if i == done else Teardown.RECORDS_ONLY)
                 for i, plan in enumerate(plans)}
        try:
            _teardown(driver, store, att, modes)
        except CniError as undo_exc:
            exc.details += f"\nrollback incomplete: {undo_exc}"
        raise


def remove(identity: Identity, state_dir: str, drivers: Drivers | None = None) -> None:
    """Remove an attachment's firewall, its share of shared resources and its port claims.

    Idempotent; an attachment without a record costs two stat calls (the record, its temp file). Raises CniError
    (FIREWALL_FAILURE) only if even the listing cannot remove it; the record is then kept,
    so a retry (or GC) tries again.
    """
    key = attachment_key(identity.network, identity.container_id, identity.ifname)
    if not is_recorded(state_dir, key):
        return
    with Store(state_dir) as store:
        att = store.load(key)
        if att is not None:
            _teardown((drivers or _default_drivers)(att.driver), store, att)
        else:
            store.forget(key)  # only the temp file of a record its ADD was killed writing


def _default_drivers(name: str) -> FirewallDriver:
    from . import driver_named
    return driver_named(name)


def _teardown(driver: FirewallDriver, store: Store, att: Attachment,
              modes: dict[str, Teardown] | None = None) -> None:
    """Undo an attachment unit by unit (EXACT unless `modes` says otherwise), then its claims
    and record. Progress is recorded after each unit, so a retry does not redo one."""
    remaining = list(att.units)
    for installed in att.units:
        _teardown_unit(driver, store, att, installed, (modes or {}).get(installed.unit, Teardown.EXACT))
        remaining.remove(installed)
        if remaining:
            store.save(Attachment(att.driver, att.network, att.container_id, att.ifname, tuple(remaining), att.claims))
    store.release_claims(att.claims, att.key)
    store.forget(att.key)


def _teardown_unit(driver: FirewallDriver, store: Store, att: Attachment, installed: Installed,
                   mode: Teardown) -> None:
    unit = installed.unit
    last = [store.definition(unit, k) or driver.shared(k, unit)
            for k in installed.shared if not store.other_users(unit, k, att.key)]
    if mode is Teardown.EXACT:
        try:
            driver.delete(unit, installed.items, last)
        except CniError:
            mode = Teardown.LISTING
    if mode is Teardown.LISTING:
        driver.purge(unit, [Identity(att.network, att.container_id, att.ifname)], last)
    for k in installed.shared:
        store.drop_user(unit, k, att.key)


def check(driver: FirewallDriver, rules: AttachmentRules, state_dir: str) -> None:
    """CniError(CHECK_FAILED) unless the record matches `rules` and everything it names
    (the attachment's items and the shared resources it uses) exists in the kernel."""
    plans = driver.plan(rules)
    key = attachment_key(rules.network, rules.container_id, rules.ifname)
    with Store(state_dir) as store:
        att = store.load(key)
        definitions = {} if att is None else {
            (u.unit, k): store.definition(u.unit, k) or driver.shared(k, u.unit) for u in att.units for k in u.shared}
    if att is None:
        if plans:
            raise CniError(CHECK_FAILED, "firewall rules of this attachment are not installed",
                           "no record of them in the firewall state directory")
        return
    expected = tuple(Installed(p.unit, p.items, tuple(s.key for s in p.shared)) for p in plans)
    if att.driver != driver.name or expected != att.units or set(claims_of(rules)) != set(att.claims):
        raise CniError(CHECK_FAILED, "firewall rules of this attachment differ from the configuration",
                       "the firewall backend, masquerade or port-mapping settings changed since ADD")
    problems: list[str] = []
    for installed in att.units:
        shared_items = [item for k in installed.shared for item in definitions[(installed.unit, k)].items]
        problems.extend(f"{unit_name(installed.unit)} {line}"
                        for line in driver.missing(installed.unit, [*installed.items, *shared_items]))
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise CniError(CHECK_FAILED, f"firewall rule missing: {problems[0]} (run `cni-bridge restore`)",
                       "\n".join([*shown, RESTORE_HINT]))


def gc(network: str, valid_attachments: Collection[tuple[str, str]], state_dir: str,
       drivers: Drivers | None = None, sweep: Sequence[FirewallDriver] | None = None) -> list[str]:
    """Remove the firewall of `network`'s attachments not in valid_attachments ((container ID,
    ifname) pairs); return the problems met (empty when all went).

    Three sweeps: recorded attachments; records of dead users (port claims, users of shared
    resources without an attachment record); and what the kernel holds tagged with this
    network and an attachment neither valid nor recorded (a lost state directory), for each
    driver in `sweep` (default: every driver a record names).
    """
    resolve = drivers or _default_drivers
    valid = set(valid_attachments)
    problems: list[str] = []
    with Store(state_dir) as store:
        try:
            store.remove_debris()
        except CniError as exc:
            problems.append(str(exc))
        used: dict[str, FirewallDriver] = {d.name: d for d in sweep or ()}
        for key, att in store.attachments():
            if att is None:
                problems.append(f"firewall record {key} is unreadable")
                continue
            driver = resolve(att.driver)
            used.setdefault(driver.name, driver)
            if att.network == network and (att.container_id, att.ifname) not in valid:
                try:
                    _teardown(driver, store, att)
                except CniError as exc:
                    problems.append(f"container {att.container_id} ifname {att.ifname}: {exc}")
        # Valid attachments are alive even when their record was lost: the shared
        # resources and host ports they use stay.
        live = {key for key, _ in store.attachments()} | {attachment_key(network, c, i) for c, i in valid}
        for claim, holder in store.all_claims():
            if holder["key"] not in live:
                store.release_claims([claim], holder["key"])
        # Strays first: their rules may still use a shared resource that goes next.
        for driver in used.values() or [resolve("iptables")]:
            problems.extend(_sweep(driver, network, valid, live))
        problems.extend(_collect_shared(store, live, list(used.values()), resolve))
    return problems


def _collect_shared(store: Store, live: set[str], drivers: Sequence[FirewallDriver], resolve: Drivers) -> list[str]:
    """Shared resources whose users are all gone are removed; dead users are forgotten."""
    problems = []
    dead_resources: dict[str, list[Shared]] = {}
    for unit, resource_key in store.shared_resources():
        users = store.users(unit, resource_key)
        dead = [u for u in users if u not in live]
        if dead and len(dead) == len(users):
            resource = store.definition(unit, resource_key)
            if resource is None:
                try:
                    resource = _owning(drivers, unit, resolve).shared(resource_key, unit)
                except ValueError as exc:
                    problems.append(f"shared firewall rules {resource_key} ({unit_name(unit)}): {exc}")
                    continue
            dead_resources.setdefault(unit, []).append(resource)
        for user in dead:
            if len(dead) < len(users):
                store.drop_user(unit, resource_key, user)
    for unit, resources in dead_resources.items():
        try:
            driver = _owning(drivers, unit, resolve)
            try:
                driver.delete(unit, (), resources)
            except CniError:
                driver.purge(unit, (), resources)
        except (CniError, ValueError) as exc:
            problems.append(f"shared firewall rules {', '.join(r.key for r in resources)} ({unit_name(unit)}): {exc}")
            continue
        for resource in resources:
            for user in store.users(unit, resource.key):
                store.drop_user(unit, resource.key, user)
    return problems


def _owning(drivers: Sequence[FirewallDriver], unit: str, resolve: Drivers) -> FirewallDriver:
    """The driver whose unit it is: one of `drivers`, else any known driver (units are
    distinct: "4" and "6" are iptables', "inet" nftables')."""
    owner = next((d for d in drivers if unit in d.units()), None)
    if owner is not None:
        return owner
    from . import DRIVERS
    for name in DRIVERS:
        candidate = resolve(name)
        if unit in candidate.units():
            return candidate
    raise ValueError(f"no firewall driver keeps a unit {unit!r}")


def _sweep(driver: FirewallDriver, network: str, valid: set[tuple[str, str]], live: set[str]) -> list[str]:
    problems = []
    for unit in driver.units():
        try:
            strays = [o for o in driver.tagged(unit, network)
                      if (o.container_id, o.ifname) not in valid
                      and attachment_key(o.network, o.container_id, o.ifname) not in live]
            if strays:
                driver.purge(unit, strays, ())
        except CniError as exc:
            problems.append(f"{unit_name(unit)}: {exc}")
    return problems
