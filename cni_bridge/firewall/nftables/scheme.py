"""What the nftables backend installs: the table ``inet cni-bridge`` as data. Pure functions.

One table of our own holds both families. Its base chains and their rules are fixed; an ADD
or DEL changes elements of its sets and maps (``C`` is an attachment's comment, see
``attachment_comment``; ``S`` a shared resource's, ``cni-bridge shared=<key>``)::

    table inet cni-bridge
      chain raw-prerouting   filter, prerouting, priority raw (-300)          localhost-guard
          iifname != "lo" ip daddr 127.0.0.0/8 counter drop
      chain nat-prerouting   nat, prerouting, priority dstnat (-100)          hostport
          fib daddr type local goto hostports
      chain nat-output       nat, output, priority -100                       hostport
          fib daddr type local goto hostports
      chain hostports                                                          hostport
          meta l4proto { tcp, udp, sctp }
              dnat ip to ip daddr . meta l4proto . th dport map @dnat4_addr
                       : ip daddr . meta l4proto . th dport map @dnat4_port
          meta nfproto ipv4 meta l4proto { tcp, udp, sctp }
              dnat ip to meta l4proto . th dport map @dnat4any_addr
                       : meta l4proto . th dport map @dnat4any_port
          (the same with ip6, @dnat6_addr, @dnat6_port, @dnat6any_addr, @dnat6any_port)
      chain nat-postrouting  nat, postrouting, priority srcnat (100)          postrouting
          ct status dnat oifname . ip daddr vmap @hairpin4
          ct status dnat oifname . ip6 daddr vmap @hairpin6
          iifname . ip saddr vmap @masq4
          iifname . ip6 saddr vmap @masq6
      chain masq-<h>         (one per set of networks; key masq:<h>)
          ip daddr { <subnets>, <ipMasqExclude>, 224.0.0.0/4 } return
          ip6 daddr { ..., ff00::/8 } return
          masquerade
      chain hairpin-<h>      (one per set of networks; key hairpin:<h>)
          ip saddr { <container subnets>, 127.0.0.1 } masquerade      (0.0.0.0/0 with masqAll)
          ip6 saddr { <container subnets> } masquerade
      chain filter-forward   filter, forward, priority filter (0)            forward
          iifname . oifname @bridge_pairs accept
          iifname . oifname @internal_pairs accept
          iifname @internal drop
          oifname @internal drop
          ct status & dnat == 0 iifname @isolated oifname @bridges drop
          ct status & dnat == 0 iifname @bridges oifname @isolated drop

Elements of one attachment (each commented C), per family with an address:

    masq4          <bridge> . <container ip> : jump masq-<h>            ipMasq
    hairpin4       <bridge> . <container ip> : jump hairpin-<h>         a published port, snat
    dnat4_addr     <host ip> . <proto> . <host port> : <container ip>   a mapping with a hostIP
    dnat4_port     <the same key> : <container port>
    dnat4any_addr  <proto> . <host port> : <container ip>               a mapping without
    dnat4any_port  <the same key> : <container port>

and of a bridge (commented S): ``bridges`` and ``bridge_pairs`` (key ``bridge:<br>``, every
bridge with addressed attachments), ``internal`` and ``internal_pairs`` (``internal:<br>``),
``isolated`` (``isolate:<br>``). ``<h>`` is a hash of the networks a chain lists: the
attachments of one network share their chains, a changed ipMasqExclude gets new ones.

Why this shape:

- Lookups, not rule lists: a packet costs the same few hash lookups with one container or
  three hundred, and an ADD or DEL changes elements (and the first or last of a network,
  its chains); no rule handle is ever needed.
- Only exact-match (hash) sets and maps: removing an element from an interval set (nft's
  pipapo) costs the kernel time in proportion to the set, which a DEL with 300 containers
  present would pay for every such set it touches. Networks are matched by the anonymous
  sets of the per-network chains instead, which only change with their network.
- Hairpin and 127.0.0.1 traffic is masqueraded where it leaves (postrouting: DNATed, going
  back out of the bridge to a container, from its subnet or loopback), not by a packet
  mark: marks are shared with kube-proxy and others, and postrouting knows all it needs.
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
name)`` (their definitions are below, by name), ``("masq-chain" | "hairpin-chain", name,
v4 networks, v6 networks)`` (comma-separated), ``("element", set, key, data, comment)`` with
key and data as text (components joined by `` . ``, a verdict as ``jump <chain>``), and
``("accept", kind, bridge)``: the iptables accepts compat.py writes where an iptables
FORWARD policy drops.
"""

from __future__ import annotations

from ...network.naming import attachment_digest
from ...records import record
from ..model import COMMENT_PREFIX, SHARED_COMMENT_PREFIX, by_family, validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ..model import AttachmentRules

    Item = tuple[Any, ...]
    Expr = Any

FAMILY = "inet"
TABLE = "cni-bridge"
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
_IP = {4: "ip", 6: "ip6"}
_L4 = ("tcp", "udp", "sctp")

# Shared keys in creation order: the table, then what defines sets and chains, then elements.
SHARED_KINDS = ("table", "forward", "hostport", "postrouting", "masq", "hairpin", "localhost-guard", "bridge",
                "internal", "isolate")


@record(frozen=True)
class SetDef:
    """A named set or map: its key types, the data type of a map ("" for a set). All of them
    match exactly (hash): no interval sets, see above."""

    key: tuple[str, ...]
    data: str = ""


@record(frozen=True)
class ChainDef:
    """A chain: base chains have a type, hook and priority; rules are (expressions, comment)."""

    rules: tuple[tuple[tuple[Expr, ...], str], ...]
    type: str = ""
    hook: str = ""
    priority: int = 0


SETS: dict[str, SetDef] = {
    # Verdict maps: a container's address to the chain of its network's masquerade rules.
    "masq4": SetDef(("ifname", "ipv4_addr"), "verdict"),
    "masq6": SetDef(("ifname", "ipv6_addr"), "verdict"),
    "hairpin4": SetDef(("ifname", "ipv4_addr"), "verdict"),
    "hairpin6": SetDef(("ifname", "ipv6_addr"), "verdict"),
    # Two maps per key (address, port): nft 1.0.6 cannot create a map whose data is a
    # concatenation (address . port) from JSON.
    "dnat4_addr": SetDef(("ipv4_addr", "inet_proto", "inet_service"), "ipv4_addr"),
    "dnat4_port": SetDef(("ipv4_addr", "inet_proto", "inet_service"), "inet_service"),
    "dnat4any_addr": SetDef(("inet_proto", "inet_service"), "ipv4_addr"),
    "dnat4any_port": SetDef(("inet_proto", "inet_service"), "inet_service"),
    "dnat6_addr": SetDef(("ipv6_addr", "inet_proto", "inet_service"), "ipv6_addr"),
    "dnat6_port": SetDef(("ipv6_addr", "inet_proto", "inet_service"), "inet_service"),
    "dnat6any_addr": SetDef(("inet_proto", "inet_service"), "ipv6_addr"),
    "dnat6any_port": SetDef(("inet_proto", "inet_service"), "inet_service"),
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


def _dnat_rule(family: int, any_address: bool) -> tuple[Expr, ...]:
    ip = _IP[family]
    port = (_meta("l4proto"), _payload("th", "dport"))
    key = _concat(*port) if any_address else _concat(_payload(ip, "daddr"), *port)
    maps = f"dnat{family}any" if any_address else f"dnat{family}"
    return (_match(_meta("nfproto"), "ipv4" if family == 4 else "ipv6"),
            _match(_meta("l4proto"), {"set": list(_L4)}),
            {"dnat": {"family": ip,
                      "addr": {"map": {"key": key, "data": f"@{maps}_addr"}},
                      "port": {"map": {"key": key, "data": f"@{maps}_port"}}}})


def _vmap(key: Expr, map_name: str) -> Expr:
    return {"vmap": {"key": key, "data": f"@{map_name}"}}


def _postrouting_rules() -> list[tuple[Expr, ...]]:
    # Hairpin first: a DNATed packet between two containers of one subnet is also one the
    # masquerade chain would leave alone (its own subnet).
    out: list[tuple[Expr, ...]] = [
        (_DNAT, _vmap(_concat(_meta("oifname"), _payload(_IP[family], "daddr")), f"hairpin{family}"))
        for family in (4, 6)]
    out.extend((_vmap(_concat(_meta("iifname"), _payload(_IP[family], "saddr")), f"masq{family}"),)
               for family in (4, 6))
    return out


def _networks(csv: str) -> Expr:
    return {"set": [{"prefix": {"addr": a, "len": int(n)}} if n else a
                    for a, _, n in (cidr.partition("/") for cidr in csv.split(","))]}


NETWORKS_CHAINS = ("masq-chain", "hairpin-chain")


def networks_chain_rules(item: Item) -> tuple[tuple[tuple[Expr, ...], str], ...]:
    """The rules of a ("masq-chain" | "hairpin-chain", name, v4 networks, v6 networks) item:
    destinations in those networks are not masqueraded, everything else is (masq); sources in
    those networks are masqueraded (hairpin). Empty when the item does not say its networks."""
    kind, name, v4, v6 = item
    comment = shared_comment(name.replace("-", ":", 1))
    lists = [(f, csv) for f, csv in ((4, v4), (6, v6)) if csv]
    if not lists:
        return ()
    rules: list[tuple[Expr, ...]]
    if kind == "masq-chain":
        rules = [(_match(_payload(_IP[f], "daddr"), _networks(csv)), _RETURN) for f, csv in lists]
        rules.append((_MASQUERADE,))
    else:
        rules = [(_match(_payload(_IP[f], "saddr"), _networks(csv)), _MASQUERADE) for f, csv in lists]
    return tuple((r, comment) for r in rules)


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
    # A hostIP mapping and a wildcard one never share a port (claims), so the order is free.
    "hostports": _chain("hostport", [_dnat_rule(f, any_address) for f in (4, 6) for any_address in (False, True)]),
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
        return (*(("set", f"dnat{f}{kind}_{what}") for f in (4, 6) for kind in ("", "any") for what in ("addr", "port")),
                ("chain", "hostports"), ("chain", "nat-prerouting"), ("chain", "nat-output"))
    if kind == "postrouting":
        return (*(("set", f"{what}{f}") for what in ("masq", "hairpin") for f in (4, 6)), ("chain", "nat-postrouting"))
    if kind in ("masq", "hairpin"):
        # Named by a hash of its networks, which the key does not tell: enough to delete it.
        return ((f"{kind}-chain", f"{kind}-{arg}", "", ""),)
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
    """What one attachment needs: its elements, and the shared resources it uses (key, items)."""

    items: tuple[Item, ...]
    shared: tuple[tuple[str, tuple[Item, ...]], ...]


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


def _networks_chain(kind: str, lists: dict[int, list[str]]) -> tuple[str, str, Item]:
    """(key, chain name, item) of the masq or hairpin chain for these networks per family,
    named by their hash: attachments with the same networks share it, others get their own."""
    from ...digest import sha256_hex
    v4, v6 = ",".join(lists.get(4, [])), ",".join(lists.get(6, []))
    digest = sha256_hex(f"{kind}\0{v4}\0{v6}".encode())[:16]
    return f"{kind}:{digest}", f"{kind}-{digest}", (f"{kind}-chain", f"{kind}-{digest}", v4, v6)


def build(rules: AttachmentRules) -> Plan | None:
    """Everything one attachment needs; None when it needs nothing."""
    validate(rules)
    c = attachment_comment(rules.network, rules.container_id, rules.ifname)
    br = rules.bridge
    facts = by_family(rules)
    addresses, subnets, excludes = facts.addresses, facts.subnets, facts.excludes
    mappings = {family: [(address, pm.protocol, pm.host_port, pm.container_port) for pm, address in published]
                for family, published in facts.mappings.items()}  # (host ip, proto, host port, container port)

    items: list[Item] = []
    used: dict[str, tuple[Item, ...]] = {}
    masq: dict[int, list[str]] = {}       # family -> destinations never masqueraded
    masq_ips: list[tuple[int, str]] = []
    hairpin: dict[int, list[str]] = {}    # family -> sources masqueraded on their way to a published port
    targets: list[tuple[int, str]] = []
    for family in (4, 6):
        own = addresses[family]
        if not own and not (rules.internal or rules.isolate):
            continue
        for name in ("table", "forward", *([f"bridge:{br}"] if own and not rules.internal else []),
                     *([f"internal:{br}"] if rules.internal else []), *([f"isolate:{br}"] if rules.isolate else [])):
            used[name] = shared(name)
        own_subnets = list(dict.fromkeys(subnet for _, subnet in own))
        if own and rules.ip_masq and not rules.internal:
            masq[family] = _collapsed([*(subnets[family] or own_subnets), *excludes[family], _MULTICAST[family]])
            masq_ips.extend((family, ip) for ip, _ in own)
        published = _published(mappings[family]) if own else []
        if published:
            target = own[0][0]
            used["hostport"] = shared("hostport")
            for host_ip, proto, host_port, container_port in published:
                key: list[object] = [host_ip, proto, host_port] if host_ip else [proto, host_port]
                maps = f"dnat{family}" if host_ip else f"dnat{family}any"
                items.append(_element(f"{maps}_addr", key, target, c))
                items.append(_element(f"{maps}_port", key, container_port, c))
            if rules.snat:
                hairpin[family] = [_ANY[family]] if rules.masq_all else _collapsed(
                    [*own_subnets, *(["127.0.0.1/32"] if family == 4 else [])])
                targets.append((family, target))
            if family == 4:
                used["localhost-guard"] = shared("localhost-guard")
    for kind, lists, keyed in (("masq", masq, masq_ips), ("hairpin", hairpin, targets)):
        if lists:
            used["postrouting"] = shared("postrouting")
            chain_key, chain, item = _networks_chain(kind, lists)
            used[chain_key] = (item,)
            items.extend(_element(f"{kind}{family}", [br, address], f"jump {chain}", c) for family, address in keyed)
    if not used:
        return None
    order = sorted(used, key=lambda k: (kind_rank(k), k))
    return Plan(tuple(dict.fromkeys(items)), tuple((k, used[k]) for k in order))


def _published(mappings: list[tuple[str, str, int, int]]) -> list[tuple[str, str, int, int]]:
    """The mappings whose key does not overlap an earlier one's (same protocol and port, and
    the same address or either a wildcard): the earlier one wins, as in iptables."""
    out: list[tuple[str, str, int, int]] = []
    for mapping in mappings:
        host_ip, proto, port, _ = mapping
        if not any(p == proto and n == port and (not h or not host_ip or h == host_ip) for h, p, n, _ in out):
            out.append(mapping)
    return out
