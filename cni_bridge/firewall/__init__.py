"""Masquerade, published ports, forwarding accepts and isolation, as atomic iptables batches.

The facade the commands use:

- ``install(rules, state_dir)`` on ADD: one ``iptables-restore --noflush`` per family
  with everything the attachment needs; returns the undo for the ADD's rollback.
- ``remove(network, container_id, ifname, state_dir)`` on DEL: idempotent, needs no
  namespace, no config and, while the kernel matches the record, no table listing.
- ``check(rules, state_dir)`` on CHECK, ``gc(network, valid, state_dir)`` on GC.
- ``flush_udp_conntrack(ports)`` after an ADD that publishes UDP ports.

``state_dir`` must be one directory for the whole host (network namespace): shared
chains and host ports belong to every network. See state.py for its layout and for
how users of shared chains are counted, plan.py for the rule scheme.

Failure handling. A batch is refused as a whole per table, but tables commit one by one,
so a failed batch may have left earlier tables in place; and rules may vanish behind our
back (someone flushes a table). Whenever the exact-text removal is refused, the
fallback lists the tables involved (iptables-save) and removes whatever still exists of
this attachment: its chains, every rule jumping to them, every rule with its comment.
"""

from __future__ import annotations

import os

from ..errors import CHECK_FAILED, FIREWALL_FAILURE, CniError
from . import iptables, plan
from .plan import AttachmentRules, Claim, FamilyPlan, Shared
from .state import Attachment, Installed, Store, attachment_key, is_recorded

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

__all__ = ["AttachmentRules", "install", "remove", "check", "gc", "flush_udp_conntrack"]


def _nothing() -> None:
    return None


def install(rules: AttachmentRules, state_dir: str) -> Callable[[], None]:
    """Install an attachment's rules; all or nothing. Returns the undo (its removal).

    Raises CniError: INVALID_CONFIG for rules that cannot be rendered, PORT_CONFLICT
    (110) naming the holder when a host port is taken, FIREWALL_FAILURE (109) with
    iptables' message when a batch is refused; in every case the host is left as it was.
    A repeated ADD of the same attachment first removes what the earlier one installed.
    """
    plans = _plans(rules)
    claims = plan.claims(rules)
    key = attachment_key(rules.network, rules.container_id, rules.ifname)
    if not plans and not claims and not is_recorded(state_dir, key):
        return _nothing
    with Store(state_dir) as store:
        _install_locked(store, rules, key, plans, claims)

    def undo() -> None:
        remove(rules.network, rules.container_id, rules.ifname, state_dir)

    return undo


def _plans(rules: AttachmentRules) -> tuple[FamilyPlan, ...]:
    # Internal and isolated networks get IPv6 drops even without IPv6 addresses; a
    # kernel without IPv6 has no ip6tables to hold them, and nothing to forward.
    families = _families_available()
    return tuple(fp for fp in plan.build(rules) if fp.family in families)


def _install_locked(store: Store, rules: AttachmentRules, key: str,
                    plans: tuple[FamilyPlan, ...], claims: tuple[Claim, ...]) -> None:
    old = store.load(key)
    if old is not None:
        _teardown(store, old)
    try:
        _attempt(store, rules, key, plans, claims)
    except CniError as exc:
        # If the attempt was rolled back completely and shared rules that other
        # attachments' records vouch for are missing from the kernel (tables flushed by
        # hand, a firewall reload), put them back and try once more; otherwise every
        # ADD would fail until the last of those attachments is gone.
        if exc.code != FIREWALL_FAILURE or store.load(key) is not None or not _repair_shared(store, key, plans):
            raise
        _attempt(store, rules, key, plans, claims)


def _repair_shared(store: Store, key: str, plans: tuple[FamilyPlan, ...]) -> bool:
    """Re-add the missing parts of shared resources in use by others; True if any were."""
    repaired = False
    for fp in plans:
        reused = [store.definition(fp.family, s.key) or s for s in fp.shared
                  if store.other_users(fp.family, s.key, key)]
        if not reused:
            continue
        tables = sorted({t for r in reused for t, _ in r.chains} | {rule.table for r in reused for rule in r.rules})
        saved = [plan.parse_save(table, iptables.save(table, fp.family)) for table in tables]
        fixes = [part for part in (plan.absent(saved, r) for r in reused) if part is not None]
        if fixes:
            iptables.restore(fp.family, plan.render_add((), (), fixes))
            repaired = True
    return repaired


def _attempt(store: Store, rules: AttachmentRules, key: str,
             plans: tuple[FamilyPlan, ...], claims: tuple[Claim, ...]) -> None:
    store.check_claims(claims, key)
    creates: dict[int, list[Shared]] = {
        fp.family: [s for s in fp.shared if not store.other_users(fp.family, s.key, key)] for fp in plans}
    att = Attachment(rules.network, rules.container_id, rules.ifname,
                     tuple(Installed(fp.family, fp.chains, fp.rules, tuple(s.key for s in fp.shared)) for fp in plans),
                     claims)
    # Recorded before the kernel is touched: a crash leaves a record without rules,
    # which DEL's fallback handles, never rules without a record.
    store.save(att)
    try:
        store.take_claims(claims, att)
        for fp in plans:
            for resource in fp.shared:
                store.add_user(fp.family, resource, key, created=resource in creates[fp.family])
    except CniError:
        _teardown(store, att, modes={fp.family: "none" for fp in plans})
        raise
    done = 0
    try:
        for fp in plans:
            iptables.restore(fp.family, plan.render_add(fp.chains, fp.rules, creates[fp.family]))
            done += 1
    except CniError as exc:
        # Applied families are removed by their exact text, the failed one by what a
        # listing finds (some of its tables may have committed), the rest never started.
        modes = {fp.family: ("strict" if i < done else "fallback" if i == done else "none")
                 for i, fp in enumerate(plans)}
        try:
            _teardown(store, att, modes=modes)
        except CniError as undo_exc:
            exc.details += f"\nrollback incomplete: {undo_exc}"
        raise


def remove(network: str, container_id: str, ifname: str, state_dir: str) -> None:
    """Remove an attachment's rules, its share of shared chains and its port claims.

    Idempotent; an attachment without a record costs one stat call. Raises CniError
    (FIREWALL_FAILURE) only if even the fallback cannot remove the rules; the record is
    then kept, so a retry (or GC) tries again.
    """
    key = attachment_key(network, container_id, ifname)
    if not is_recorded(state_dir, key):
        return
    with Store(state_dir) as store:
        att = store.load(key)
        if att is not None:
            _teardown(store, att)


def _teardown(store: Store, att: Attachment, modes: dict[int, str] | None = None) -> None:
    """Undo an attachment family by family; mode "strict" (default) falls back to a
    listing if the exact-text batch is refused, "fallback" lists first, "none" only
    updates the records (nothing of that family reached the kernel)."""
    remaining = list(att.families)
    for installed in att.families:
        mode = (modes or {}).get(installed.family, "strict")
        _teardown_family(store, att, installed, mode)
        remaining.remove(installed)
        if remaining:
            # Progress is recorded, so a retry after a failure in the next family
            # does not redo this one.
            store.save(Attachment(att.network, att.container_id, att.ifname, tuple(remaining), att.claims))
    store.release_claims(att.claims, att.key)
    store.forget(att.key)


def _teardown_family(store: Store, att: Attachment, installed: Installed, mode: str) -> None:
    family = installed.family
    deleting = [store.definition(family, k) or plan.shared(k, family)
                for k in installed.shared if not store.other_users(family, k, att.key)]
    if mode == "strict":
        try:
            iptables.restore(family, plan.render_delete(installed.chains, installed.rules, deleting))
        except CniError:
            mode = "fallback"
    if mode == "fallback":
        comments = {plan.attachment_comment(att.network, att.container_id, att.ifname)}
        comments.update(plan.shared_comment(resource.key) for resource in deleting)
        chains = {chain for _, chain in installed.chains}
        chains.update(chain for resource in deleting for _, chain in resource.chains)
        tables = {table for table, _ in installed.chains} | {rule.table for rule in installed.rules}
        tables.update(rule.table for resource in deleting for rule in resource.rules)
        tables.update(table for resource in deleting for table, _ in resource.chains)
        _cleanup(family, tables, chains, comments)
    for k in installed.shared:
        store.drop_user(family, k, att.key)


def _cleanup(family: int, tables: Iterable[str], chains: Collection[str], comments: Collection[str]) -> None:
    saved = [plan.parse_save(table, iptables.save(table, family)) for table in sorted(tables)]
    iptables.restore(family, plan.render_cleanup(saved, chains, comments))


def check(rules: AttachmentRules, state_dir: str) -> None:
    """CniError(CHECK_FAILED) unless the recorded rules match `rules` and all exist.

    Existence is read with one iptables-save per table involved, compared line by line
    (we render rules in save's own format). Not `iptables -C`: one process per rule;
    and `iptables-restore --test` with -C lines reports success for absent rules on the
    nf_tables backend (checked with iptables 1.8.9).
    """
    plans = _plans(rules)
    key = attachment_key(rules.network, rules.container_id, rules.ifname)
    with Store(state_dir) as store:
        att = store.load(key)
        definitions = {} if att is None else {
            (i.family, k): store.definition(i.family, k) or plan.shared(k, i.family)
            for i in att.families for k in i.shared}
    if att is None:
        if plans:
            raise CniError(CHECK_FAILED, "firewall rules of this attachment are not installed",
                           "no record of them in the firewall state directory")
        return
    expected = tuple(Installed(fp.family, fp.chains, fp.rules, tuple(s.key for s in fp.shared)) for fp in plans)
    if expected != att.families or set(plan.claims(rules)) != set(att.claims):
        raise CniError(CHECK_FAILED, "firewall rules of this attachment differ from the configuration",
                       "the masquerade or port-mapping settings changed since ADD")
    problems: list[str] = []
    for installed in att.families:
        resources = [definitions[(installed.family, k)] for k in installed.shared]
        chains = [*installed.chains, *(c for r in resources for c in r.chains)]
        all_rules = [*installed.rules, *(rule for r in resources for rule in r.rules)]
        tables = sorted({t for t, _ in chains} | {rule.table for rule in all_rules})
        saved = [plan.parse_save(table, iptables.save(table, installed.family)) for table in tables]
        problems.extend(f"IPv{installed.family} {line}" for line in plan.missing(saved, chains, all_rules))
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise CniError(CHECK_FAILED, f"firewall rule missing: {problems[0]}", "\n".join(shown))


def gc(network: str, valid_attachments: Collection[tuple[str, str]], state_dir: str) -> list[str]:
    """Remove the rules of `network`'s attachments not in valid_attachments
    ((container ID, ifname) pairs); return the problems met (empty when all went).

    Three sweeps: recorded attachments; records of dead users (port claims, shared-chain
    markers without an attachment record); and rules in the nat tables whose comment
    names this network and an invalid attachment but that have no record (a lost
    state directory).
    """
    valid = set(valid_attachments)
    problems: list[str] = []
    with Store(state_dir) as store:
        for key, att in store.attachments():
            if att is None:
                problems.append(f"firewall record {key} is unreadable")
            elif att.network == network and (att.container_id, att.ifname) not in valid:
                try:
                    _teardown(store, att)
                except CniError as exc:
                    problems.append(f"container {att.container_id} ifname {att.ifname}: {exc}")
        live = {key for key, _ in store.attachments()}
        for claim, holder in store.all_claims():
            if holder["key"] not in live:
                store.release_claims([claim], holder["key"])
        # Dependents first: a bridge's rules go before the chain that holds them.
        for family, resource_key in sorted(store.shared_resources(), key=lambda fk: -plan.kind_rank(fk[1])):
            users = store.users(family, resource_key)
            dead = [u for u in users if u not in live]
            if not dead:
                continue
            try:
                if len(dead) == len(users):
                    resource = store.definition(family, resource_key) or plan.shared(resource_key, family)
                    _remove_shared(family, resource)
                for user in dead:
                    store.drop_user(family, resource_key, user)
            except (CniError, ValueError) as exc:
                problems.append(f"shared firewall rules {resource_key} (IPv{family}): {exc}")
        problems.extend(_sweep(network, valid, live))
    return problems


def _remove_shared(family: int, resource: Shared) -> None:
    try:
        iptables.restore(family, plan.render_delete((), (), [resource]))
    except CniError:
        tables = {t for t, _ in resource.chains} | {r.table for r in resource.rules}
        _cleanup(family, tables, {c for _, c in resource.chains}, {plan.shared_comment(resource.key)})


def _families_available() -> list[int]:
    # Without IPv6 in the kernel ip6tables-save fails; there is nothing to sweep then.
    return [4, 6] if os.path.exists("/proc/net/if_inet6") else [4]


def _sweep(network: str, valid: set[tuple[str, str]], live: set[str]) -> list[str]:
    problems = []
    for family in _families_available():
        try:
            saved = plan.parse_save("nat", iptables.save("nat", family))
        except CniError as exc:
            problems.append(f"IPv{family}: {exc}")
            continue
        chains: set[str] = set()
        comments: set[str] = set()
        for _, spec in saved.rules:
            comment = plan.comment_of(spec)
            owner = plan.parse_attachment_comment(comment) if comment else None
            if owner is None or owner[0] != network or (owner[1], owner[2]) in valid:
                continue
            if attachment_key(*owner) in live:
                continue  # recorded: removed above, or kept on purpose after a failure
            digest = plan.attachment_digest(*owner)
            chains.update((plan.masq_chain(digest), plan.dnat_chain(digest)))
            comments.add(plan.attachment_comment(*owner))
        if comments:
            try:
                iptables.restore(family, plan.render_cleanup([saved], chains, comments))
            except CniError as exc:
                problems.append(f"IPv{family}: {exc}")
    return problems


def flush_udp_conntrack(host_ports: Iterable[int], families: Iterable[int] = (4, 6)) -> int:
    """Delete UDP conntrack entries whose original destination port is one of host_ports
    (in the current network namespace); return how many. CniError(FIREWALL_FAILURE) if
    ctnetlink refuses; the reference only logs such a failure, and so may the caller."""
    from .conntrack import flush_udp
    return flush_udp(host_ports, families)
