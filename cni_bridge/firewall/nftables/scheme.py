"""What the nftables backend installs: the table ``inet cni-bridge`` as data. Pure functions.

One table of our own holds both families. Its chains and rules are fixed; an ADD or DEL
changes only elements of its sets and maps (``C`` is an attachment's comment, see
``attachment_comment``; ``S`` a shared resource's, ``cni-bridge shared=<key>``)::

    table inet cni-bridge
      chain raw-prerouting   filter, prerouting, priority raw (-300)          localhost-guard
          iifname != "lo" ip daddr 127.0.0.0/8 counter drop
      chain nat-prerouting   nat, prerouting, priority dstnat (-100)          hostport
          fib daddr type local goto hostports
      chain nat-output       nat, output, priority -100                       hostport
          fib daddr type local goto hostports
      chain hostports                                                          hostport
          meta nfproto ipv4 meta l4proto { tcp, udp, sctp }
              dnat ip to ip daddr . meta l4proto . th dport map @dnat4_addr
                       : ip daddr . meta l4proto . th dport map @dnat4_port
          (the same with ip6, @dnat6_addr and @dnat6_port)
      chain nat-postrouting  nat, postrouting, priority srcnat (100)          postrouting
          ct status dnat oifname . ip saddr . ip daddr @hairpin4 masquerade
          iifname . ip saddr . ip daddr @nomasq4 return
          iifname . ip saddr @masq4 masquerade
          (the same for ip6)
      chain filter-forward   filter, forward, priority filter (0)            forward
          iifname . oifname @bridge_pairs accept
          iifname . oifname @internal_pairs accept
          iifname @internal drop
          oifname @internal drop
          ct status & dnat == 0 iifname @isolated oifname @bridges drop
          ct status & dnat == 0 iifname @bridges oifname @isolated drop

Elements of one attachment (each commented C), per family with an address:

    masq4       <bridge> . <container ip>                         ipMasq
    nomasq4     <bridge> . <container ip> . <cidr>                its subnets, ipMasqExclude, 224.0.0.0/4
    dnat4_addr  <host ip | 0.0.0.0/0> . <proto> . <host port> : <container ip>
    dnat4_port  <the same key> : <container port>
    hairpin4    <bridge> . <container subnet | 127.0.0.1 | 0.0.0.0/0 (masqAll)> . <container ip>   snat

and of a bridge (commented S): ``bridges`` and ``bridge_pairs`` (key ``bridge:<br>``, every
bridge with addressed attachments), ``internal`` and ``internal_pairs`` (``internal:<br>``),
``isolated`` (``isolate:<br>``).

Why this shape:

- Lookups, not rule lists: a packet costs the same few set lookups with one container
  or three hundred, and an ADD adds elements, never a rule; no rule handle is ever needed.
- Hairpin and 127.0.0.1 traffic is masqueraded where it leaves (postrouting: DNATed, going
  back out of the bridge, from the container's subnet or loopback), not by a packet mark:
  marks are shared with kube-proxy and others, and postrouting knows all it needs.
- The forward chain only drops (internal, isolate). Its accepts just keep same-bridge
  traffic away from those drops: an accept in our table does not stop another table's base
  chain from dropping (netfilter runs every base chain of a hook; drop is final, accept is
  not), which is why hosts whose iptables FORWARD policy is DROP get accepts written there
  (compat.py).
- Keys carry the bridge name, so the same container address on two bridges does not clash.
- Port claims (portmap.py) keep the DNAT keys of different attachments disjoint; within one
  attachment a later mapping whose key overlaps an earlier one is left out (the earlier
  one wins, as the first matching iptables rule does).

Items, as the orchestration records them: ``("table",)``, ``("set", name)``, ``("chain",
name)`` (their definitions are below, by name), ``("element", set, key, data, comment)``
with key and data as text (components joined by `` . ``), and ``("accept", kind,
bridge)``: the iptables accepts compat.py writes where an iptables FORWARD policy drops.
"""

from __future__ import annotations

from ...network.naming import attachment_digest
from ...records import record
from ..model import parse_address, parse_network, validate
from ..portmap import mapping_families

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ..model import AttachmentRules

    Item = tuple[Any, ...]
    Expr = Any

FAMILY = "inet"
TABLE = "cni-bridge"
COMMENT_PREFIX = "cni-bridge "
SHARED_COMMENT_PREFIX = "cni-bridge shared="
# nft's own parser refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN): a saved ruleset
# with one could not be loaded back with `nft -f`.
COMMENT_MAX = 128

# Base chain priorities (nft's names: raw -300, dstnat -100, filter 0, srcnat 100).
PRIORITY_RAW = -300
PRIORITY_DSTNAT = -100
PRIORITY_FILTER = 0
PRIORITY_SRCNAT = 100

_MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
_ANY = {4: "0.0.0.0/0", 6: "::/0"}
_ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
_IP = {4: "ip", 6: "ip6"}
_L4 = ("tcp", "udp", "sctp")

# Shared keys in creation order: the table, then what defines sets and chains, then elements.
SHARED_KINDS = ("table", "forward", "hostport", "postrouting", "localhost-guard", "bridge", "internal", "isolate")


@record(frozen=True)
class SetDef:
    """A named set or map: its key types, the data type of a map ("" for a set)."""

    key: tuple[str, ...]
    data: str = ""
    interval: bool = False


@record(frozen=True)
class ChainDef:
    """A chain: base chains have a type, hook and priority; rules are (expressions, comment)."""

    rules: tuple[tuple[tuple[Expr, ...], str], ...]
    type: str = ""
    hook: str = ""
    priority: int = 0


SETS: dict[str, SetDef] = {
    "masq4": SetDef(("ifname", "ipv4_addr")),
    "masq6": SetDef(("ifname", "ipv6_addr")),
    "nomasq4": SetDef(("ifname", "ipv4_addr", "ipv4_addr"), interval=True),
    "nomasq6": SetDef(("ifname", "ipv6_addr", "ipv6_addr"), interval=True),
    "hairpin4": SetDef(("ifname", "ipv4_addr", "ipv4_addr"), interval=True),
    "hairpin6": SetDef(("ifname", "ipv6_addr", "ipv6_addr"), interval=True),
    # Two maps per family with one key: nft 1.0.6 cannot create a map whose data is a
    # concatenation (address . port) from JSON.
    "dnat4_addr": SetDef(("ipv4_addr", "inet_proto", "inet_service"), "ipv4_addr", interval=True),
    "dnat4_port": SetDef(("ipv4_addr", "inet_proto", "inet_service"), "inet_service", interval=True),
    "dnat6_addr": SetDef(("ipv6_addr", "inet_proto", "inet_service"), "ipv6_addr", interval=True),
    "dnat6_port": SetDef(("ipv6_addr", "inet_proto", "inet_service"), "inet_service", interval=True),
    "bridges": SetDef(("ifname",)),
    "bridge_pairs": SetDef(("ifname", "ifname")),
    "internal": SetDef(("ifname",)),
    "internal_pairs": SetDef(("ifname", "ifname")),
    "isolated": SetDef(("ifname",)),
}


# --- expressions (libnftables JSON) ----------------------------------------------------


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _payload(protocol: str, field: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": field}}


def _concat(*exprs: Expr) -> Expr:
    return {"concat": list(exprs)}


def _match(left: Expr, right: Expr, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _in(left: Expr, set_name: str) -> Expr:
    return _match(left, f"@{set_name}")


_LOCAL = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
# "in" tests a flag, "!" tests it clear (nft's `ct status dnat`, `ct status & dnat == 0`);
# "==" and "!=" would compare the whole status word.
_DNAT = _match({"ct": {"key": "status"}}, "dnat", "in")
_NOT_DNAT = _match({"ct": {"key": "status"}}, "dnat", "!")
_ACCEPT: Expr = {"accept": None}
_DROP: Expr = {"drop": None}
_RETURN: Expr = {"return": None}
_MASQUERADE: Expr = {"masquerade": None}


def shared_comment(key: str) -> str:
    return SHARED_COMMENT_PREFIX + key


def _dnat_rule(family: int) -> tuple[Expr, ...]:
    ip = _IP[family]
    key = _concat(_payload(ip, "daddr"), _meta("l4proto"), _payload("th", "dport"))
    return (_match(_meta("nfproto"), "ipv4" if family == 4 else "ipv6"),
            _match(_meta("l4proto"), {"set": list(_L4)}),
            {"dnat": {"family": ip,
                      "addr": {"map": {"key": key, "data": f"@dnat{family}_addr"}},
                      "port": {"map": {"key": key, "data": f"@dnat{family}_port"}}}})


def _postrouting_rules() -> list[tuple[Expr, ...]]:
    out: list[tuple[Expr, ...]] = []
    for family in (4, 6):
        ip = _IP[family]
        out.append((_DNAT, _in(_concat(_meta("oifname"), _payload(ip, "saddr"), _payload(ip, "daddr")),
                               f"hairpin{family}"), _MASQUERADE))
    for family in (4, 6):
        ip = _IP[family]
        out.append((_in(_concat(_meta("iifname"), _payload(ip, "saddr"), _payload(ip, "daddr")), f"nomasq{family}"),
                    _RETURN))
    for family in (4, 6):
        out.append((_in(_concat(_meta("iifname"), _payload(_IP[family], "saddr")), f"masq{family}"), _MASQUERADE))
    return out


def _forward_rules() -> list[tuple[Expr, ...]]:
    pair = _concat(_meta("iifname"), _meta("oifname"))
    return [
        (_in(pair, "bridge_pairs"), _ACCEPT),
        (_in(pair, "internal_pairs"), _ACCEPT),
        (_in(_meta("iifname"), "internal"), _DROP),
        (_in(_meta("oifname"), "internal"), _DROP),
        (_NOT_DNAT, _in(_meta("iifname"), "isolated"), _in(_meta("oifname"), "bridges"), _DROP),
        (_NOT_DNAT, _in(_meta("iifname"), "bridges"), _in(_meta("oifname"), "isolated"), _DROP),
    ]


def _chain(key: str, rules: Iterable[tuple[Expr, ...]], type: str = "", hook: str = "",
           priority: int = 0) -> ChainDef:
    comment = shared_comment(key)
    return ChainDef(tuple((r, comment) for r in rules), type, hook, priority)


_GOTO_HOSTPORTS = (_LOCAL, {"goto": {"target": "hostports"}})

CHAINS: dict[str, ChainDef] = {
    "raw-prerouting": _chain("localhost-guard", [(
        _match(_meta("iifname"), "lo", "!="), _match(_payload("ip", "daddr"), {"prefix": {"addr": "127.0.0.0", "len": 8}}),
        {"counter": None}, _DROP)], "filter", "prerouting", PRIORITY_RAW),
    "hostports": _chain("hostport", [_dnat_rule(4), _dnat_rule(6)]),
    "nat-prerouting": _chain("hostport", [_GOTO_HOSTPORTS], "nat", "prerouting", PRIORITY_DSTNAT),
    "nat-output": _chain("hostport", [_GOTO_HOSTPORTS], "nat", "output", PRIORITY_DSTNAT),
    "nat-postrouting": _chain("postrouting", _postrouting_rules(), "nat", "postrouting", PRIORITY_SRCNAT),
    "filter-forward": _chain("forward", _forward_rules(), "filter", "forward", PRIORITY_FILTER),
}


# --- comments --------------------------------------------------------------------------


def _plain_comment_char(c: str) -> bool:
    # Quotes and backslashes would need escaping in `nft list` text, which nft has no way to do.
    return c.isprintable() and c not in "\"\\"


def attachment_comment(network: str, container_id: str, ifname: str) -> str:
    """``cni-bridge net=<net> id=<cid> if=<ifname>``; if that is longer than 128 bytes or holds a
    character nft's text cannot quote, ``cni-bridge key=<32 hex digits> ...`` instead, still
    unique (the key is the attachment's hash) but no longer read back into an identity."""
    plain = f"{COMMENT_PREFIX}net={network} id={container_id} if={ifname}"
    if len(plain.encode()) <= COMMENT_MAX and all(_plain_comment_char(c) for c in plain):
        return plain
    key = attachment_digest(network, container_id, ifname)[:32]
    text = "".join(c if _plain_comment_char(c) else "?" for c in f"{COMMENT_PREFIX}key={key} {plain[len(COMMENT_PREFIX):]}")
    return text.encode()[:COMMENT_MAX].decode(errors="ignore")


def parse_attachment_comment(comment: str) -> tuple[str, str, str] | None:
    """(network, container ID, ifname) of a plain attachment comment, else None."""
    parts = comment.split(" ")
    if len(parts) != 4 or parts[0] != COMMENT_PREFIX.strip():
        return None
    fields = []
    for part, name in zip(parts[1:], ("net=", "id=", "if=")):
        if not part.startswith(name):
            return None
        fields.append(part[len(name):])
    return fields[0], fields[1], fields[2]


# --- shared resources -------------------------------------------------------------------


def _element(set_name: str, key: Iterable[object], data: object, comment: str) -> Item:
    return ("element", set_name, " . ".join(str(k) for k in key), "" if data == "" else str(data), comment)


def shared(key: str) -> tuple[Item, ...]:
    """The items of a shared resource: fixed by its key alone."""
    kind, _, arg = key.partition(":")
    if kind == "table":
        return (("table",),)
    if kind == "forward":
        return (*(("set", name) for name in ("bridges", "bridge_pairs", "internal", "internal_pairs", "isolated")),
                ("chain", "filter-forward"))
    if kind == "hostport":
        return (*(("set", f"dnat{f}_{what}") for f in (4, 6) for what in ("addr", "port")),
                ("chain", "hostports"), ("chain", "nat-prerouting"), ("chain", "nat-output"))
    if kind == "postrouting":
        return (*(("set", f"{what}{f}") for what in ("masq", "nomasq", "hairpin") for f in (4, 6)),
                ("chain", "nat-postrouting"))
    if kind == "localhost-guard":
        return (("chain", "raw-prerouting"),)
    c = shared_comment(key)
    if kind == "bridge":
        return (_element("bridges", [arg], "", c), _element("bridge_pairs", [arg, arg], "", c), ("accept", kind, arg))
    if kind == "internal":
        return (_element("internal", [arg], "", c), _element("internal_pairs", [arg, arg], "", c),
                ("accept", kind, arg))
    if kind == "isolate":
        return (_element("isolated", [arg], "", c),)
    raise ValueError(f"unknown shared firewall resource {key!r}")


def kind_rank(key: str) -> int:
    kind = key.partition(":")[0]
    return SHARED_KINDS.index(kind) if kind in SHARED_KINDS else len(SHARED_KINDS)


# --- the plan ----------------------------------------------------------------------------


@record(frozen=True)
class Plan:
    """What one attachment needs: its elements, and the keys of the shared resources it uses."""

    items: tuple[Item, ...]
    shared: tuple[str, ...]


def _collapsed(cidrs: Iterable[str]) -> list[str]:
    """Non-overlapping networks covering `cidrs` (an interval set refuses overlapping elements)."""
    import ipaddress
    networks = [ipaddress.ip_network(c) for c in cidrs]
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    return [_host_or_cidr(str(n)) for n in [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]]


def _host_or_cidr(cidr: str) -> str:
    # nft lists a one-address interval as the bare address: write it the same way.
    address, _, length = cidr.partition("/")
    return address if length in ("32", "128") else cidr


def build(rules: AttachmentRules) -> Plan | None:
    """Everything one attachment needs; None when it needs nothing."""
    validate(rules)
    c = attachment_comment(rules.network, rules.container_id, rules.ifname)
    br = rules.bridge
    addresses: dict[int, list[tuple[str, str]]] = {4: [], 6: []}  # family -> [(ip, its subnet)]
    for ip, prefixlen in rules.ips:
        family, address = parse_address(ip, "ips[]")
        addresses[family].append((address, parse_network(f"{address}/{prefixlen}", "ips[]")[1]))
    subnets: dict[int, list[str]] = {4: [], 6: []}
    for cidr in rules.subnets:
        family, network = parse_network(cidr, "subnets[]")
        subnets[family].append(network)
    excludes: dict[int, list[str]] = {4: [], 6: []}
    for cidr in rules.masq_exclude:
        family, network = parse_network(cidr, "ipMasqExclude[]")
        excludes[family].append(network)
    mappings: dict[int, list[tuple[str, str, int, int]]] = {4: [], 6: []}  # (host ip, proto, host, container port)
    for i, pm in enumerate(rules.port_mappings):
        for family, address in mapping_families(pm.host_ip, f"runtimeConfig.portMappings[{i}].hostIP"):
            mappings[family].append((address, pm.protocol, pm.host_port, pm.container_port))

    items: list[Item] = []
    keys: set[str] = set()
    for family in (4, 6):
        own = addresses[family]
        if not own and not (rules.internal or rules.isolate):
            continue
        keys.update(("table", "forward"))
        if own and not rules.internal:
            keys.add(f"bridge:{br}")
        if rules.internal:
            keys.add(f"internal:{br}")
        if rules.isolate:
            keys.add(f"isolate:{br}")
        own_subnets = list(dict.fromkeys(subnet for _, subnet in own))
        if own and rules.ip_masq and not rules.internal:
            keys.add("postrouting")
            excluded = _collapsed([*(subnets[family] or own_subnets), *excludes[family], _MULTICAST[family]])
            for ip, _ in own:
                items.append(_element(f"masq{family}", [br, ip], "", c))
                items.extend(_element(f"nomasq{family}", [br, ip, cidr], "", c) for cidr in excluded)
        published = _published(mappings[family]) if own else []
        if published:
            target = own[0][0]
            keys.add("hostport")
            for host_ip, proto, host_port, container_port in published:
                key = [_host_or_cidr(host_ip) if host_ip else _ANY[family], proto, host_port]
                items.append(_element(f"dnat{family}_addr", key, target, c))
                items.append(_element(f"dnat{family}_port", key, container_port, c))
            if rules.snat:
                keys.add("postrouting")
                sources = [_ANY[family]] if rules.masq_all else _collapsed(
                    [*own_subnets, *(["127.0.0.1/32"] if family == 4 else [])])
                items.extend(_element(f"hairpin{family}", [br, source, target], "", c) for source in sources)
            if family == 4:
                keys.add("localhost-guard")
    if not keys:
        return None
    return Plan(tuple(dict.fromkeys(items)), tuple(sorted(keys, key=lambda k: (kind_rank(k), k))))


def _published(mappings: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    """The mappings whose key does not overlap an earlier one's (same protocol and port, and
    the same address or either a wildcard): the earlier one wins, as in iptables."""
    out: list[tuple[str, str, int, int]] = []
    for mapping in mappings:
        host_ip, proto, port, _ = mapping
        if not any(p == proto and n == port and (not h or not host_ip or h == host_ip) for h, p, n, _ in out):
            out.append(mapping)
    return out
