"""What the firewall installs for one attachment, as `iptables-restore` text. Pure functions.

Rule scheme, per address family (iptables for IPv4, ip6tables for IPv6); `C` is the
attachment's comment ``cni-bridge net=<net> id=<cid> if=<ifname>``, `S` a shared rule's
comment ``cni-bridge shared=<key>``, `h` 17 hex digits of sha256(net, cid, ifname):

nat (per attachment):
    POSTROUTING          -s <ip>/32 C -j CNIBR-MASQ-h              (one per container IP; ipMasq)
    CNIBR-MASQ-h         -d <subnet> C -j RETURN                    (each subnet of the network)
                         -d <exclude> C -j RETURN                   (each ipMasqExclude CIDR)
                         -d 224.0.0.0/4 C -j RETURN                 (ff00::/8 for IPv6)
                         C -j MASQUERADE
    CNIBR-HOSTPORT-DNAT  -p <proto> C -m multiport --dports <p,...> -j CNIBR-DNAT-h
    CNIBR-DNAT-h         per mapping, in order (reference portmap):
                         -s <container subnet> [-d hostIP] -p P C -m P --dport H -j MARK ...  (hairpin; snat)
                         -s 127.0.0.1/32 [-d hostIP] -p P C -m P --dport H -j MARK ...        (localhost; snat, IPv4)
                         [-d hostIP] -p P C -m P --dport H -j DNAT --to-destination <ip>:<port>
nat (shared):
    hostport             PREROUTING and OUTPUT: S -m addrtype --dst-type LOCAL -j CNIBR-HOSTPORT-DNAT
    masq-mark:<bit>      POSTROUTING, first: S -m mark --mark M/M -j MASQUERADE
raw (shared, IPv4):
    localhost-guard      PREROUTING, first: -d 127.0.0.0/8 ! -i lo S -j DROP
filter (shared):
    forward              FORWARD, first: S -j CNIBR-FORWARD; creates CNIBR-FORWARD,
                         CNIBR-ISOLATE-TO and CNIBR-ISOLATE-FROM
    bridge:<br>          CNIBR-FORWARD: -o br S -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT
                                        -i br S -j ACCEPT
                         CNIBR-ISOLATE-TO: -o br S -j DROP; CNIBR-ISOLATE-FROM: -i br S -j DROP
    internal:<br>        CNIBR-FORWARD, first: -i br ! -o br S -j DROP; ! -i br -o br S -j DROP;
                         appended: -i br -o br S -j ACCEPT
    isolate:<br>         CNIBR-FORWARD, first:
                         -i br ! -o br S -m conntrack ! --ctstate DNAT -j CNIBR-ISOLATE-TO
                         ! -i br -o br S -m conntrack ! --ctstate DNAT -j CNIBR-ISOLATE-FROM

Why this shape:

- Every rule is written exactly as `iptables-save` prints it (field order, `/32` masks,
  `-m tcp`, quoting), on both backends; so CHECK and the fallbacks compare lines as text.
- Per-attachment rules live only in the nat table; the filter and raw tables hold shared
  rules keyed by bridge, so the second container on a bridge adds nothing there.
- Inside CNIBR-FORWARD the order of shared rules never matters: drops are inserted first
  and accepts appended, and the isolation drops exempt DNATed traffic themselves
  (`! --ctstate DNAT`) instead of relying on an accept above them. Two commands adding
  rules in any order give the same verdicts.
- The masquerade-by-mark rule is keyed by the mark bit, so networks with different
  `markMasqBit` values do not fight over one SETMARK chain as reference chains do; the
  mark itself is set inline (`-j MARK`) or by a jump to `externalSetMarkChain`.
- A chain is created with `:CHAIN - [0:0]`, which under `--noflush` creates it or
  empties it, and always succeeds; a DEL empties the same way, deletes the recorded
  jumps (`-D`), then `-X`es. No listing is needed while the kernel matches the record.

Tables are committed one by one even inside one restore (each `COMMIT`), so the order
matters when a batch fails halfway: ADD writes filter and raw (drops, guard) before nat
(which opens ports), DEL removes nat first.
"""

from __future__ import annotations

from ...network.naming import attachment_digest
from ...records import record
from ..model import COMMENT_PREFIX, SHARED_COMMENT_PREFIX, by_family, validate
from .syntax import comment_match, printable_comment

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..model import AttachmentRules
    from ..portmap import PortMapping

HOSTPORT_CHAIN = "CNIBR-HOSTPORT-DNAT"
FORWARD_CHAIN = "CNIBR-FORWARD"
ISOLATE_TO_CHAIN = "CNIBR-ISOLATE-TO"
ISOLATE_FROM_CHAIN = "CNIBR-ISOLATE-FROM"
MASQ_CHAIN_PREFIX = "CNIBR-MASQ-"
DNAT_CHAIN_PREFIX = "CNIBR-DNAT-"
# XT_EXTENSION_MAXNAMELEN is 29 with the NUL: chain names are at most 28 characters.
MAX_CHAIN_NAME = 28
_HASH_DIGITS = MAX_CHAIN_NAME - len(MASQ_CHAIN_PREFIX)  # 17 hex digits, 68 bits
# xt_multiport takes at most 15 ports per rule.
MULTIPORT_MAX = 15



_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_HOST_BITS = {4: 32, 6: 128}

# Shared keys in creation order: chains before the rules that go into them.
SHARED_KINDS = ("forward", "bridge", "internal", "isolate", "localhost-guard", "hostport", "masq-mark")


@record(frozen=True)
class Rule:
    """One rule: `spec` is the text iptables-save prints after ``-A <chain>``."""

    table: str
    chain: str
    spec: str
    insert: bool = False  # placed first in the chain (-I chain 1) instead of appended

    @property
    def saved(self) -> str:
        """The line as iptables-save prints it."""
        return f"-A {self.chain} {self.spec}"


@record(frozen=True)
class SharedRules:
    """Chains and rules several attachments need; present while one of them is."""

    key: str
    chains: tuple[tuple[str, str], ...]  # (table, chain) created with it
    rules: tuple[Rule, ...]


@record(frozen=True)
class FamilyRules:
    """What one attachment needs in one family: its own chains and rules, and shared ones."""

    family: int  # 4 or 6
    chains: tuple[tuple[str, str], ...]
    rules: tuple[Rule, ...]
    shared: tuple[SharedRules, ...]


# --- names and quoting ------------------------------------------------------------


def masq_chain(digest: str) -> str:
    return MASQ_CHAIN_PREFIX + digest[:_HASH_DIGITS]


def dnat_chain(digest: str) -> str:
    return DNAT_CHAIN_PREFIX + digest[:_HASH_DIGITS]


def attachment_comment(network: str, container_id: str, ifname: str) -> str:
    return printable_comment(f"{COMMENT_PREFIX}net={network} id={container_id} if={ifname}")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- shared resources ------------------------------------------------------------


def shared_comment(key: str) -> str:
    return printable_comment(SHARED_COMMENT_PREFIX + key)


def mark_value(bit: int) -> str:
    value = f"{1 << bit:#x}"
    return f"{value}/{value}"


def shared(key: str, family: int) -> SharedRules:
    """The chains and rules of a shared resource: fixed by its key and family alone."""
    kind, _, arg = key.partition(":")
    c = comment_match(shared_comment(key))
    if kind == "forward":
        chains = tuple(("filter", name) for name in (FORWARD_CHAIN, ISOLATE_TO_CHAIN, ISOLATE_FROM_CHAIN))
        return SharedRules(key, chains, (Rule("filter", "FORWARD", f"{c} -j {FORWARD_CHAIN}", insert=True),))
    if kind == "bridge":
        return SharedRules(key, (), (
            Rule("filter", FORWARD_CHAIN, f"-o {arg} {c} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT"),
            Rule("filter", FORWARD_CHAIN, f"-i {arg} {c} -j ACCEPT"),
            Rule("filter", ISOLATE_TO_CHAIN, f"-o {arg} {c} -j DROP"),
            Rule("filter", ISOLATE_FROM_CHAIN, f"-i {arg} {c} -j DROP"),
        ))
    if kind == "internal":
        return SharedRules(key, (), (
            Rule("filter", FORWARD_CHAIN, f"-i {arg} ! -o {arg} {c} -j DROP", insert=True),
            Rule("filter", FORWARD_CHAIN, f"! -i {arg} -o {arg} {c} -j DROP", insert=True),
            Rule("filter", FORWARD_CHAIN, f"-i {arg} -o {arg} {c} -j ACCEPT"),
        ))
    if kind == "isolate":
        return SharedRules(key, (), (
            Rule("filter", FORWARD_CHAIN,
                 f"-i {arg} ! -o {arg} {c} -m conntrack ! --ctstate DNAT -j {ISOLATE_TO_CHAIN}", insert=True),
            Rule("filter", FORWARD_CHAIN,
                 f"! -i {arg} -o {arg} {c} -m conntrack ! --ctstate DNAT -j {ISOLATE_FROM_CHAIN}", insert=True),
        ))
    if kind == "localhost-guard":
        return SharedRules(key, (), (Rule("raw", "PREROUTING", f"-d 127.0.0.0/8 ! -i lo {c} -j DROP", insert=True),))
    if kind == "hostport":
        jump = f"{c} -m addrtype --dst-type LOCAL -j {HOSTPORT_CHAIN}"
        return SharedRules(key, (("nat", HOSTPORT_CHAIN),),
                      (Rule("nat", "PREROUTING", jump), Rule("nat", "OUTPUT", jump)))
    if kind == "masq-mark":
        mark = mark_value(int(arg))
        return SharedRules(key, (), (Rule("nat", "POSTROUTING", f"{c} -m mark --mark {mark} -j MASQUERADE", insert=True),))
    raise ValueError(f"unknown shared firewall resource {key!r}")


def kind_rank(key: str) -> int:
    """Creation order of shared resources (chains before the rules that go into them)."""
    kind = key.partition(":")[0]
    return SHARED_KINDS.index(kind) if kind in SHARED_KINDS else len(SHARED_KINDS)


# --- the plan ---------------------------------------------------------------------


def build(rules: AttachmentRules) -> tuple[FamilyRules, ...]:
    """Everything one attachment needs, per family; families with nothing to do are left out."""
    validate(rules)
    digest = attachment_digest(rules.network, rules.container_id, rules.ifname)
    c = comment_match(attachment_comment(rules.network, rules.container_id, rules.ifname))
    facts = by_family(rules)
    addresses, subnets, excludes, mappings = facts.addresses, facts.subnets, facts.excludes, facts.mappings

    plans = []
    for family in (4, 6):
        own = addresses[family]
        if not own and not (rules.internal or rules.isolate):
            continue
        chains: list[tuple[str, str]] = []
        rule_list: list[Rule] = []
        keys: list[str] = ["forward"]
        if own and not rules.internal:
            keys.append(f"bridge:{rules.bridge}")
        if rules.internal:
            keys.append(f"internal:{rules.bridge}")
        if rules.isolate:
            keys.append(f"isolate:{rules.bridge}")
        own_subnets = _unique(subnet for _, subnet in own)
        if own and rules.ip_masq and not rules.internal:
            chain = masq_chain(digest)
            chains.append(("nat", chain))
            for cidr in _unique([*(subnets[family] or own_subnets), *excludes[family], _MULTICAST[family]]):
                rule_list.append(Rule("nat", chain, f"-d {cidr} {c} -j RETURN"))
            rule_list.append(Rule("nat", chain, f"{c} -j MASQUERADE"))
            for ip, _ in own:
                rule_list.append(Rule("nat", "POSTROUTING", f"-s {ip}/{_HOST_BITS[family]} {c} -j {chain}"))
        published = mappings[family] if own else []
        if published:
            chain = dnat_chain(digest)
            chains.append(("nat", chain))
            rule_list.extend(_dnat_rules(rules, family, chain, c, own[0][0], own_subnets, published))
            rule_list.extend(_hostport_jumps(chain, c, published))
            keys.append("hostport")
            if rules.snat and not rules.external_set_mark_chain:
                keys.append(f"masq-mark:{rules.mark_masq_bit}")
            if family == 4:
                keys.append("localhost-guard")
        keys.sort(key=kind_rank)
        plans.append(FamilyRules(family, tuple(chains), tuple(_unique_rules(rule_list)),
                                tuple(shared(key, family) for key in keys)))
    return tuple(plans)


def _unique_rules(rules: list[Rule]) -> list[Rule]:
    # Duplicate mappings would render duplicate lines; one copy of each is enough.
    return list(dict.fromkeys(rules))


def _dnat_rules(rules: AttachmentRules, family: int, chain: str, c: str, target: str,
                own_subnets: list[str], published: list[tuple[PortMapping, str]]) -> list[Rule]:
    if rules.external_set_mark_chain:
        set_mark = f"-j {rules.external_set_mark_chain}"
    else:
        set_mark = f"-j MARK --set-xmark {mark_value(rules.mark_masq_bit)}"
    destination = f"{target}" if family == 4 else f"[{target}]"
    out = []
    for pm, host_ip in published:
        d = f"-d {host_ip}/{_HOST_BITS[family]} " if host_ip else ""
        match = f"-p {pm.protocol} {c} -m {pm.protocol} --dport {pm.host_port}"
        if rules.snat:
            # Hairpin (a container reaching a published port through a host address)
            # and localhost need masquerading, or the reply would bypass the DNAT.
            if rules.masq_all:
                out.append(Rule("nat", chain, f"{d}{match} {set_mark}"))
            else:
                for subnet in own_subnets:
                    out.append(Rule("nat", chain, f"-s {subnet} {d}{match} {set_mark}"))
                if family == 4:
                    out.append(Rule("nat", chain, f"-s 127.0.0.1/32 {d}{match} {set_mark}"))
        out.append(Rule("nat", chain, f"{d}{match} -j DNAT --to-destination {destination}:{pm.container_port}"))
    return out


def _hostport_jumps(chain: str, c: str, published: list[tuple[PortMapping, str]]) -> list[Rule]:
    ports: dict[str, set[int]] = {}
    for pm, _ in published:
        ports.setdefault(pm.protocol, set()).add(pm.host_port)
    out = []
    for protocol in sorted(ports):
        listed = sorted(ports[protocol])
        for start in range(0, len(listed), MULTIPORT_MAX):
            group = ",".join(str(p) for p in listed[start:start + MULTIPORT_MAX])
            out.append(Rule("nat", HOSTPORT_CHAIN, f"-p {protocol} {c} -m multiport --dports {group} -j {chain}"))
    return out


