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

import hashlib

from ..errors import INVALID_CONFIG, CniError
from ..records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Sequence

    from ..config.model import PortMapping

PREFIX = "CNIBR-"
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
# xt_comment keeps 256 bytes including the NUL.
COMMENT_MAX = 255

COMMENT_PREFIX = "cni-bridge "
SHARED_COMMENT_PREFIX = "cni-bridge shared="

TABLES_ADD_ORDER = ("filter", "raw", "nat")
TABLES_DELETE_ORDER = ("nat", "raw", "filter")
PROTOCOLS = ("tcp", "udp", "sctp")

_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_HOST_BITS = {4: 32, 6: 128}
_WILDCARD = {4: "0.0.0.0", 6: "::"}

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
class Shared:
    """Rules and chains several attachments need; present while one of them is."""

    key: str
    chains: tuple[tuple[str, str], ...]  # (table, chain) created with it
    rules: tuple[Rule, ...]


@record(frozen=True)
class FamilyPlan:
    """What one attachment needs in one family: its own chains and rules, and shared ones."""

    family: int  # 4 or 6
    chains: tuple[tuple[str, str], ...]
    rules: tuple[Rule, ...]
    shared: tuple[Shared, ...]


@record(frozen=True)
class Claim:
    """A published (protocol, host port, host IP); host_ip is canonical, a wildcard is 0.0.0.0 or ::."""

    protocol: str
    host_port: int
    host_ip: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.host_ip else 4

    @property
    def wildcard(self) -> bool:
        return self.host_ip == _WILDCARD[self.family]

    def __str__(self) -> str:
        return f"{self.host_port}/{self.protocol} on {self.host_ip}"


@record(frozen=True)
class AttachmentRules:
    """The firewall-relevant facts of one attachment (network, container ID, ifname).

    ``ips`` are the container's addresses with their prefix length; ``subnets`` the
    network's CIDRs (traffic to them is never masqueraded; defaults to the subnets of
    ``ips``). ``port_mappings`` take objects with host_port, container_port, protocol
    and host_ip ("" for both families, 0.0.0.0 or :: for one family's wildcard).
    """

    network: str
    bridge: str
    container_id: str
    ifname: str
    ips: tuple[tuple[str, int], ...] = ()
    subnets: tuple[str, ...] = ()
    port_mappings: tuple[PortMapping, ...] = ()
    ip_masq: bool = False
    masq_exclude: tuple[str, ...] = ()
    snat: bool = True
    mark_masq_bit: int = 13
    external_set_mark_chain: str = ""
    masq_all: bool = False
    isolate: bool = False
    internal: bool = False


# --- names and quoting ------------------------------------------------------------


def attachment_digest(network: str, container_id: str, ifname: str) -> str:
    """sha256 of the attachment's identity, hex: the source of its chain and file names.

    The same inputs as the host veth name (network.naming), NUL-separated so that
    ("a", "bc") and ("ab", "c") differ. Unlike the reference, ifname is included: two
    interfaces of one container on one network get separate chains.
    """
    return hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()


def masq_chain(digest: str) -> str:
    return MASQ_CHAIN_PREFIX + digest[:_HASH_DIGITS]


def dnat_chain(digest: str) -> str:
    return DNAT_CHAIN_PREFIX + digest[:_HASH_DIGITS]


_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def quote(value: str) -> str:
    """Quote a match argument exactly as iptables-save does (libxtables xtables_save_string).

    iptables-restore reads it back unchanged, so what we write is what save prints.
    """
    if value and all(c in _NO_QUOTE for c in value):
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


def unquote(text: str) -> tuple[str, str]:
    """Read one (possibly quoted) argument at the start of text: (value, rest)."""
    if not text.startswith('"'):
        value, _, rest = text.partition(" ")
        return value, rest
    out: list[str] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), text[i + 1:].lstrip(" ")
        out.append(c)
        i += 1
    return "".join(out), ""


def _printable(text: str) -> str:
    # A newline or other control character would end the restore line early: the
    # comment is for people and for GC, so such characters are replaced, not escaped.
    return "".join(c if " " <= c < "\x7f" or c > "\x9f" else "?" for c in text)


def _truncate(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


def attachment_comment(network: str, container_id: str, ifname: str) -> str:
    return _truncate(_printable(f"{COMMENT_PREFIX}net={network} id={container_id} if={ifname}"), COMMENT_MAX)


def parse_attachment_comment(comment: str) -> tuple[str, str, str] | None:
    """(network, container ID, ifname) from an attachment comment, None if it is not one."""
    parts = comment.split(" ")
    if len(parts) != 4 or parts[0] != COMMENT_PREFIX.strip():
        return None
    fields = []
    for part, name in zip(parts[1:], ("net=", "id=", "if=")):
        if not part.startswith(name):
            return None
        fields.append(part[len(name):])
    return fields[0], fields[1], fields[2]


def comment_match(comment: str) -> str:
    return f"-m comment --comment {quote(comment)}"


def comment_of(spec: str) -> str | None:
    """The comment of a saved rule spec, unquoted, or None."""
    head, found, tail = spec.partition("-m comment --comment ")
    if not found:
        return None
    return unquote(tail)[0]


def target_of(spec: str) -> str:
    """The jump (-j) or goto (-g) target of a saved rule spec, "" if none."""
    words = spec.split(" ")
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "-g"):
            return words[i + 1]
    return ""


# --- validation ---------------------------------------------------------------------


def _fail(what: str) -> CniError:
    return CniError(INVALID_CONFIG, what)


def _check_ifname(name: str, what: str) -> None:
    # The kernel's dev_valid_name; it also keeps the name one word in restore syntax.
    if (not name or len(name.encode()) > 15 or name in (".", "..")
            or any(c in name for c in "/:\"'\\") or any(c.isspace() or not c.isprintable() for c in name)):
        raise _fail(f"{what}: {name!r} is not a valid interface name")


def _check_chain_name(name: str, what: str) -> None:
    if (not name or len(name) > MAX_CHAIN_NAME or name[0] in "-!"
            or any(not (c.isascii() and c.isprintable()) or c.isspace() or c in "\"'\\" for c in name)):
        raise _fail(f"{what}: {name!r} is not a valid iptables chain name")


def _address(text: str, what: str) -> tuple[int, str]:
    import ipaddress
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise _fail(f"{what}: {text!r} is not a valid IP address") from None
    return address.version, str(address)


def _network(text: str, what: str) -> tuple[int, str]:
    import ipaddress
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _fail(f"{what}: {text!r} is not a valid CIDR") from None
    return network.version, str(network)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# --- shared resources ------------------------------------------------------------


def shared_comment(key: str) -> str:
    return _truncate(_printable(SHARED_COMMENT_PREFIX + key), COMMENT_MAX)


def mark_value(bit: int) -> str:
    value = f"{1 << bit:#x}"
    return f"{value}/{value}"


def shared(key: str, family: int) -> Shared:
    """The chains and rules of a shared resource: fixed by its key and family alone."""
    kind, _, arg = key.partition(":")
    c = comment_match(shared_comment(key))
    if kind == "forward":
        chains = tuple(("filter", name) for name in (FORWARD_CHAIN, ISOLATE_TO_CHAIN, ISOLATE_FROM_CHAIN))
        return Shared(key, chains, (Rule("filter", "FORWARD", f"{c} -j {FORWARD_CHAIN}", insert=True),))
    if kind == "bridge":
        return Shared(key, (), (
            Rule("filter", FORWARD_CHAIN, f"-o {arg} {c} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT"),
            Rule("filter", FORWARD_CHAIN, f"-i {arg} {c} -j ACCEPT"),
            Rule("filter", ISOLATE_TO_CHAIN, f"-o {arg} {c} -j DROP"),
            Rule("filter", ISOLATE_FROM_CHAIN, f"-i {arg} {c} -j DROP"),
        ))
    if kind == "internal":
        return Shared(key, (), (
            Rule("filter", FORWARD_CHAIN, f"-i {arg} ! -o {arg} {c} -j DROP", insert=True),
            Rule("filter", FORWARD_CHAIN, f"! -i {arg} -o {arg} {c} -j DROP", insert=True),
            Rule("filter", FORWARD_CHAIN, f"-i {arg} -o {arg} {c} -j ACCEPT"),
        ))
    if kind == "isolate":
        return Shared(key, (), (
            Rule("filter", FORWARD_CHAIN,
                 f"-i {arg} ! -o {arg} {c} -m conntrack ! --ctstate DNAT -j {ISOLATE_TO_CHAIN}", insert=True),
            Rule("filter", FORWARD_CHAIN,
                 f"! -i {arg} -o {arg} {c} -m conntrack ! --ctstate DNAT -j {ISOLATE_FROM_CHAIN}", insert=True),
        ))
    if kind == "localhost-guard":
        return Shared(key, (), (Rule("raw", "PREROUTING", f"-d 127.0.0.0/8 ! -i lo {c} -j DROP", insert=True),))
    if kind == "hostport":
        jump = f"{c} -m addrtype --dst-type LOCAL -j {HOSTPORT_CHAIN}"
        return Shared(key, (("nat", HOSTPORT_CHAIN),),
                      (Rule("nat", "PREROUTING", jump), Rule("nat", "OUTPUT", jump)))
    if kind == "masq-mark":
        mark = mark_value(int(arg))
        return Shared(key, (), (Rule("nat", "POSTROUTING", f"{c} -m mark --mark {mark} -j MASQUERADE", insert=True),))
    raise ValueError(f"unknown shared firewall resource {key!r}")


def kind_rank(key: str) -> int:
    """Creation order of shared resources (chains before the rules that go into them)."""
    kind = key.partition(":")[0]
    return SHARED_KINDS.index(kind) if kind in SHARED_KINDS else len(SHARED_KINDS)


# --- the plan ---------------------------------------------------------------------


def _validate(rules: AttachmentRules) -> None:
    _check_ifname(rules.bridge, "bridge")
    if rules.internal and rules.port_mappings:
        raise _fail("runtimeConfig.portMappings: ports cannot be published on an internal network")
    if not 0 <= rules.mark_masq_bit <= 31:
        raise _fail(f"markMasqBit: {rules.mark_masq_bit} is not between 0 and 31")
    if rules.external_set_mark_chain:
        _check_chain_name(rules.external_set_mark_chain, "externalSetMarkChain")
    for i, pm in enumerate(rules.port_mappings):
        where = f"runtimeConfig.portMappings[{i}]"
        if pm.protocol not in PROTOCOLS:
            raise _fail(f"{where}.protocol: {pm.protocol!r} is not one of tcp, udp, sctp")
        for name, port in (("hostPort", pm.host_port), ("containerPort", pm.container_port)):
            if not 1 <= port <= 65535:
                raise _fail(f"{where}.{name}: {port} is not between 1 and 65535")


def _mapping_families(host_ip: str, where: str) -> tuple[tuple[int, str], ...]:
    """(family, "-d" address or "" for any) pairs a mapping's hostIP publishes in."""
    if not host_ip:
        return ((4, ""), (6, ""))
    family, address = _address(host_ip, where)
    return ((family, "" if address == _WILDCARD[family] else address),)


def claims(rules: AttachmentRules) -> tuple[Claim, ...]:
    """The (protocol, port, host IP) triples this attachment publishes, in order, once each.

    Only families in which the container has an address publish anything, as in the
    reference portmap; so only those are claimed.
    """
    _validate(rules)
    families = {_address(ip, "ips[]")[0] for ip, _ in rules.ips}
    out: dict[Claim, None] = {}
    for i, pm in enumerate(rules.port_mappings):
        for family, address in _mapping_families(pm.host_ip, f"runtimeConfig.portMappings[{i}].hostIP"):
            if family in families:
                out[Claim(pm.protocol, pm.host_port, address or _WILDCARD[family])] = None
    return tuple(out)


def build(rules: AttachmentRules) -> tuple[FamilyPlan, ...]:
    """Everything one attachment needs, per family; families with nothing to do are left out."""
    _validate(rules)
    digest = attachment_digest(rules.network, rules.container_id, rules.ifname)
    c = comment_match(attachment_comment(rules.network, rules.container_id, rules.ifname))
    addresses: dict[int, list[tuple[str, str]]] = {4: [], 6: []}  # family -> [(ip, its subnet)]
    for ip, prefixlen in rules.ips:
        family, address = _address(ip, "ips[]")
        addresses[family].append((address, _network(f"{address}/{prefixlen}", "ips[]")[1]))
    subnets: dict[int, list[str]] = {4: [], 6: []}
    for cidr in rules.subnets:
        family, network = _network(cidr, "subnets[]")
        subnets[family].append(network)
    excludes: dict[int, list[str]] = {4: [], 6: []}
    for cidr in rules.masq_exclude:
        family, network = _network(cidr, "ipMasqExclude[]")
        excludes[family].append(network)
    mappings: dict[int, list[tuple[PortMapping, str]]] = {4: [], 6: []}
    for i, pm in enumerate(rules.port_mappings):
        for family, address in _mapping_families(pm.host_ip, f"runtimeConfig.portMappings[{i}].hostIP"):
            mappings[family].append((pm, address))

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
        plans.append(FamilyPlan(family, tuple(chains), tuple(_unique_rules(rule_list)),
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


# --- rendering ------------------------------------------------------------------------


def _render(sections: dict[str, list[str]], order: Sequence[str]) -> str:
    out = []
    for table in order:
        lines = sections.get(table)
        if lines:
            out.append(f"*{table}")
            out.extend(lines)
            out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def _add_line(rule: Rule) -> str:
    return f"-I {rule.chain} 1 {rule.spec}" if rule.insert else f"-A {rule.chain} {rule.spec}"


def render_add(chains: Sequence[tuple[str, str]], rules: Sequence[Rule], create: Sequence[Shared]) -> str:
    """The restore text that adds an attachment's chains and rules, and creates `create`.

    Chains are declared first (created, or emptied if a leftover exists), then shared
    rules, then the attachment's own. Empty when there is nothing to do.
    """
    declared: dict[str, list[str]] = {}
    added: dict[str, list[str]] = {}
    for resource in create:
        for table, chain in resource.chains:
            declared.setdefault(table, []).append(f":{chain} - [0:0]")
        for rule in resource.rules:
            added.setdefault(rule.table, []).append(_add_line(rule))
    for table, chain in chains:
        declared.setdefault(table, []).append(f":{chain} - [0:0]")
    for rule in rules:
        added.setdefault(rule.table, []).append(_add_line(rule))
    sections = {t: declared.get(t, []) + added.get(t, []) for t in set(declared) | set(added)}
    return _render(sections, TABLES_ADD_ORDER)


def render_delete(chains: Sequence[tuple[str, str]], rules: Sequence[Rule], delete: Sequence[Shared]) -> str:
    """The restore text that removes what render_add added, and the shared `delete`.

    Chains being removed are emptied first (`:CHAIN - [0:0]`), so the rules inside them
    need no `-D`; rules elsewhere are deleted by their exact text; then the chains go.
    """
    flushed = list(dict.fromkeys([*chains, *(chain for resource in delete for chain in resource.chains)]))
    gone = {chain for _, chain in flushed}
    sections: dict[str, list[str]] = {}
    for table, chain in flushed:
        sections.setdefault(table, []).append(f":{chain} - [0:0]")
    for rule in [*rules, *(rule for resource in delete for rule in resource.rules)]:
        if rule.chain not in gone:
            sections.setdefault(rule.table, []).append(f"-D {rule.chain} {rule.spec}")
    for table, chain in flushed:
        sections.setdefault(table, []).append(f"-X {chain}")
    return _render(sections, TABLES_DELETE_ORDER)


# --- reading iptables-save --------------------------------------------------------------


@record(frozen=True)
class Saved:
    """One table as iptables-save printed it: chain names and rules, in order."""

    table: str
    chains: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]  # (chain, spec)

    def lines(self) -> set[str]:
        return {f"-A {chain} {spec}" for chain, spec in self.rules}


def parse_save(table: str, text: str) -> Saved:
    chains: list[str] = []
    rules: list[tuple[str, str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("*"):
            inside = line[1:] == table
        elif not inside or line.startswith("#"):
            continue
        elif line.startswith(":"):
            chains.append(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            chain, _, spec = line[3:].partition(" ")
            rules.append((chain, spec))
    return Saved(table, tuple(chains), tuple(rules))


def render_cleanup(saved: Sequence[Saved], chains: Collection[str], comments: Collection[str]) -> str:
    """Remove, from what the tables really hold, the given chains and every rule that
    jumps to them or carries one of the given comments. Duplicates are all removed.

    The fallback when the record and the kernel disagree (rules flushed by hand,
    another version's rule text, a batch that failed halfway): built from a fresh
    save, so every line in it refers to something that exists.
    """
    sections: dict[str, list[str]] = {}
    for table in saved:
        present = [chain for chain in table.chains if chain in chains]
        gone = set(present)
        lines = [f":{chain} - [0:0]" for chain in present]
        for chain, spec in table.rules:
            if chain in gone:
                continue
            if target_of(spec) in chains or comment_of(spec) in comments:
                lines.append(f"-D {chain} {spec}")
        lines.extend(f"-X {chain}" for chain in present)
        if lines:
            sections[table.table] = lines
    return _render(sections, TABLES_DELETE_ORDER)


def absent(saved: Sequence[Saved], resource: Shared) -> Shared | None:
    """The part of a shared resource the saved tables lack, None if it is all there."""
    by_table = {table.table: table for table in saved}
    lines = {table.table: table.lines() for table in saved}
    chains = tuple((t, c) for t, c in resource.chains if t not in by_table or c not in by_table[t].chains)
    rules = tuple(rule for rule in resource.rules if rule.saved not in lines.get(rule.table, set()))
    return Shared(resource.key, chains, rules) if chains or rules else None


def missing(saved: Sequence[Saved], chains: Iterable[tuple[str, str]], rules: Iterable[Rule]) -> list[str]:
    """The chains and rules (as save lines) that the saved tables lack."""
    by_table = {table.table: table for table in saved}
    out = []
    for table, chain in chains:
        held = by_table.get(table)
        if held is None or chain not in held.chains:
            out.append(f"{table}: chain {chain}")
    lines = {table.table: table.lines() for table in saved}
    for rule in rules:
        if rule.saved not in lines.get(rule.table, set()):
            out.append(f"{rule.table}: {rule.saved}")
    return out
