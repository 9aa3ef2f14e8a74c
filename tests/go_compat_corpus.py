"""Plugin configs and runtime arguments as Go's encoding/json reads them, for differential tests.

The runtimes and the reference plugins are Go programs. Go decodes a JSON object into a struct
key by key: a key picks the field whose name matches it exactly, else the first whose name
matches it case-insensitively (Unicode simple folding: ``ſ`` folds to ``s``, the Kelvin sign
to ``k``); when a key occurs twice the last one wins, and an object or array decoded a second
time into the same field is merged into what is there. Unknown keys are ignored. ``null``
leaves a scalar or a struct as it was and makes a pointer, slice or map nil. Numbers must fit
the field: ``1500.0`` or ``"1500"`` is an error for an int. containerd's CRI plugin sends its
port mappings from Go structs without JSON tags, so the keys arrive capitalised.

Each case is the object a runtime sends on stdin, without ``type`` (the test adds
``bridge``/``portmap`` for the reference chain and ``cni-bridge`` for ours), with
runtimeConfig, args and prevResult inside it, plus CNI_ARGS. Names that must be unique per
run are placeholders the test fills in: ``@NET@`` (network), ``@BR@``/``@BR2@`` (bridges),
``@DATA@`` (host-local dataDir), ``@NETNS@`` (the container netns path). Subnets and host
ports are literal and unique per case (``Slot``), so no two cases can disturb each other.

``differs`` names a deliberate difference from the reference chain: the README's section
"Deliberate differences from the reference chain" must list that id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Config = dict[str, Any]


@dataclass(frozen=True)
class Slot:
    """The addresses and ports reserved for the case at ``index`` of the corpus."""

    index: int

    @property
    def v4net(self) -> str:
        return f"10.{160 + self.index // 256}.{self.index % 256}.0/24"

    def v4(self, host: int) -> str:
        return f"10.{160 + self.index // 256}.{self.index % 256}.{host}"

    @property
    def other_v4net(self) -> str:
        """A second IPv4 subnet of the case, for a second range set."""
        return f"10.{192 + self.index // 256}.{self.index % 256}.0/24"

    def other_v4(self, host: int) -> str:
        return f"10.{192 + self.index // 256}.{self.index % 256}.{host}"

    @property
    def v6net(self) -> str:
        return f"fd7c:cbcb:{self.index:x}::/64"

    def v6(self, host: int) -> str:
        return f"fd7c:cbcb:{self.index:x}::{host:x}"

    def port(self, k: int = 0) -> int:
        assert 0 <= k < 10
        return 40000 + 10 * self.index + k


@dataclass(frozen=True)
class Case:
    id: str
    config: Config | str  # an object, or JSON text where duplicate keys must survive as written
    cni_args: str | None = None
    differs: str | None = None
    no_usable_name: bool = False  # Go's reading of the config has no valid network name
    why: str = ""

    @property
    def text(self) -> str:
        return self.config if isinstance(self.config, str) else json.dumps(self.config)

    @property
    def publishes_ports(self) -> bool:
        # casefold() folds ſ and the Kelvin sign as Go does, so odd spellings count too.
        return "portmappings" in self.text.casefold()

    @property
    def touches_nat(self) -> bool:
        return self.publishes_ports or "masq" in self.text.casefold()


# --- building blocks ------------------------------------------------------------------------


def ranges(*subnets: str) -> list[list[dict[str, str]]]:
    return [[{"subnet": subnet}] for subnet in subnets]


def ipam(s: Slot, *, v6: bool = False, **extra: Any) -> Config:
    subnets = [s.v4net, s.v6net] if v6 else [s.v4net]
    return {"type": "host-local", "dataDir": "@DATA@", "ranges": ranges(*subnets), **extra}


def ipam_without_ranges() -> Config:
    """For range sets that come from the runtime (``runtimeConfig.ipRanges``) only."""
    return {"type": "host-local", "dataDir": "@DATA@"}


def net(s: Slot, *, v6: bool = False, version: str = "1.0.0", **extra: Any) -> Config:
    """An L3 network on its own bridge with a gateway: the config most cases vary."""
    conf: Config = {"cniVersion": version, "name": "@NET@", "bridge": "@BR@", "isGateway": True,
                    "ipam": ipam(s, v6=v6)}
    conf.update(extra)
    return conf


def pm(s: Slot, k: int = 0, container_port: int = 80, protocol: Any = "tcp", **extra: Any) -> Config:
    return {"hostPort": s.port(k), "containerPort": container_port, "protocol": protocol, **extra}


def ports(s: Slot, *mappings: Config) -> Config:
    """runtimeConfig publishing ``mappings`` (one tcp port by default)."""
    return {"portMappings": list(mappings) or [pm(s)]}


def loopback_result(**overrides: Any) -> Config:
    """What the loopback plugin, run first in a list, hands on as prevResult."""
    result: Config = {"cniVersion": "1.0.0",
                      "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "@NETNS@"}],
                      "ips": [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"}],
                      "dns": {}}
    result.update(overrides)
    return result


def raw(*members: str) -> str:
    """An object written member by member, so a key may occur twice."""
    return "{" + ", ".join(members) + "}"


def member(key: str, value: Any) -> str:
    return f"{json.dumps(key)}: {json.dumps(value)}"


def base_members(s: Slot, *, skip: tuple[str, ...] = ()) -> list[str]:
    base = net(s)
    return [member(k, v) for k, v in base.items() if k not in skip]


def containerd_args(s: Slot) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{s.index};"
            f"K8S_POD_INFRA_CONTAINER_ID={s.index:064x};K8S_POD_UID=0c7e6c7a-{s.index:04x}-4d8e-9b1a-5d9c1e2f3a4b")


def crio_args(s: Slot) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{s.index};"
            f"K8S_POD_INFRA_CONTAINER_ID={s.index:064x};K8S_POD_UID=7d1f3b2a-{s.index:04x}-4c1e-8a9b-1f2e3d4c5b6a")


def podman_args(s: Slot, *extra: str) -> str:
    return ";".join(["IgnoreUnknown=1", f"K8S_POD_NAME=web-{s.index}", *extra])


# --- the corpus ------------------------------------------------------------------------------


class Corpus:
    def __init__(self) -> None:
        self.cases: list[Case] = []

    def add(self, case_id: str, make: Callable[[Slot], Config | str], *,
            cni_args: str | Callable[[Slot], str] | None = None, differs: str | None = None,
            no_usable_name: bool = False, why: str = "") -> None:
        slot = Slot(len(self.cases))
        args = cni_args(slot) if callable(cni_args) else cni_args
        self.cases.append(Case(case_id, make(slot), args, differs, no_usable_name, why))


def _baselines(c: Corpus) -> None:
    c.add("base-l3-v4", lambda s: net(s))
    c.add("base-l3-dual", lambda s: net(s, v6=True))
    c.add("base-l2-empty-ipam", lambda s: {"cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@", "ipam": {}})
    c.add("base-l2-no-ipam", lambda s: {"cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@"})
    c.add("base-port-tcp", lambda s: net(s, runtimeConfig=ports(s)))
    c.add("base-port-udp", lambda s: net(s, runtimeConfig=ports(s, pm(s, 0, 53, "udp"))))
    c.add("base-ports-several", lambda s: net(s, runtimeConfig=ports(
        s, pm(s, 0, 80), pm(s, 1, 443), pm(s, 2, 53, "udp"))))
    c.add("base-port-dual", lambda s: net(s, v6=True, runtimeConfig=ports(s)))
    c.add("base-port-host-ip", lambda s: net(s, runtimeConfig=ports(s, pm(s, hostIP="127.0.0.1"))))
    c.add("base-default-gateway", lambda s: net(s, v6=True, isDefaultGateway=True))
    c.add("base-ipmasq", lambda s: net(s, v6=True, ipMasq=True))
    c.add("base-hairpin", lambda s: net(s, hairpinMode=True))
    c.add("base-promisc", lambda s: net(s, promiscMode=True))
    c.add("base-mtu", lambda s: net(s, v6=True, mtu=1400))
    c.add("base-legacy-subnet", lambda s: {
        "cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@", "isGateway": True,
        "ipam": {"type": "host-local", "dataDir": "@DATA@", "subnet": s.v4net, "rangeStart": s.v4(20),
                 "rangeEnd": s.v4(30), "gateway": s.v4(1)}})
    c.add("base-routes", lambda s: net(s, ipam={**ipam(s), "routes": [
        {"dst": "0.0.0.0/0"}, {"dst": "198.51.100.0/24", "gw": s.v4(254)}]}))
    c.add("base-dns", lambda s: net(s, dns={"nameservers": ["198.51.100.53"], "domain": "svc.test",
                                            "search": ["svc.test"], "options": ["ndots:2"]}))
    c.add("base-static-ipam", lambda s: net(s, ipam={"type": "static", "addresses": [{"address": f"{s.v4(9)}/24"}]}))
    def at_version(version: str) -> Callable[[Slot], Config]:
        return lambda s: net(s, version=version)

    for version in ("0.1.0", "0.2.0", "0.3.1", "0.4.0"):
        c.add(f"base-version-{version}", at_version(version))
    c.add("base-version-1.1.0", lambda s: net(s, version="1.1.0"), differs="spec-1.1",
          why="the reference plugins of Debian 12 speak up to 1.0.0")
    c.add("base-no-version", lambda s: {k: v for k, v in net(s).items() if k != "cniVersion"},
          why="no cniVersion means 0.1.0 to both")


def _key_case_top(c: Corpus) -> None:
    """Every top-level key the reference reads, spelt otherwise: Go matches it case-insensitively."""
    c.add("case-name-capital", lambda s: {**{k: v for k, v in net(s).items() if k != "name"}, "Name": "@NET@"})
    # Two v4 range sets are refused below 0.3.0, so reading the version key matters here.
    def two_v4(s: Slot) -> Config:
        return {"type": "host-local", "dataDir": "@DATA@", "ranges": ranges(s.v4net, s.other_v4net)}

    c.add("case-cniversion-capital", lambda s: {"CNIVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@",
                                                "ipam": two_v4(s)})
    c.add("case-cniversion-lower", lambda s: {"cniversion": "0.4.0", "name": "@NET@", "bridge": "@BR@",
                                              "ipam": two_v4(s)})
    c.add("case-cniversion-exact-two-v4", lambda s: {"cniVersion": "0.4.0", "name": "@NET@", "bridge": "@BR@",
                                                     "ipam": two_v4(s)})
    c.add("case-bridge-capital", lambda s: {**{k: v for k, v in net(s).items() if k != "bridge"}, "Bridge": "@BR@"})
    c.add("case-isgateway-capital", lambda s: {**{k: v for k, v in net(s).items() if k != "isGateway"},
                                               "IsGateway": True})
    c.add("case-isdefaultgateway", lambda s: net(s, v6=True, IsDefaultGateway=True))
    c.add("case-ipmasq-capital", lambda s: net(s, v6=True, IPMasq=True))
    c.add("case-mtu-upper", lambda s: net(s, MTU=1400))
    c.add("case-hairpin-capital", lambda s: net(s, HairpinMode=True))
    c.add("case-promisc-capital", lambda s: net(s, PromiscMode=True))
    c.add("case-ipam-capital", lambda s: {**{k: v for k, v in net(s).items() if k != "ipam"}, "Ipam": ipam(s, v6=True)})
    c.add("case-hairpin-promisc-capital", lambda s: net(s, HairpinMode=True, PROMISCMODE=True),
          why="the pair is refused however it is spelt")
    c.add("case-vlan-capital", lambda s: net(s, VLAN=5000), why="out of range however it is spelt")
    c.add("case-long-s-ipmasq", lambda s: net(s, ipMaſq=True), why="Go folds ſ (U+017F) to s")
    c.add("case-kelvin-markmasqbit", lambda s: net(s, runtimeConfig=ports(s), marKMasqBit=40),
          why="Go folds the Kelvin sign (U+212A) to k: portmap reads markMasqBit 40 and refuses it")
    c.add("case-sharp-s-not-ss", lambda s: net(s, ipMaßq=True),
          why="ß does not fold to ss in Go: an unknown key")


def _key_case_ipam(c: Corpus) -> None:
    def with_ipam(s: Slot, body: Config, **extra: Any) -> Config:
        conf = net(s, **extra)
        conf["ipam"] = body
        return conf

    c.add("case-ipam-type-capital", lambda s: with_ipam(s, {"Type": "host-local", "dataDir": "@DATA@",
                                                            "ranges": ranges(s.v4net)}))
    c.add("case-ipam-ranges-capital", lambda s: with_ipam(s, {"type": "host-local", "dataDir": "@DATA@",
                                                              "Ranges": ranges(s.v4net, s.v6net)}))
    c.add("case-range-subnet-capital", lambda s: with_ipam(s, {"type": "host-local", "dataDir": "@DATA@",
                                                               "ranges": [[{"Subnet": s.v4net}]]}))
    c.add("case-range-start-end-capital", lambda s: with_ipam(s, {
        "type": "host-local", "dataDir": "@DATA@",
        "ranges": [[{"subnet": s.v4net, "RangeStart": s.v4(40), "RANGEEND": s.v4(50)}]]}))
    c.add("case-range-gateway-capital", lambda s: with_ipam(s, {
        "type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": s.v4net, "Gateway": s.v4(254)}]]}))
    c.add("case-range-v6-keys-capital", lambda s: with_ipam(s, {
        "type": "host-local", "dataDir": "@DATA@",
        "ranges": [[{"SUBNET": s.v6net, "RangeStart": s.v6(0x100), "Gateway": s.v6(1)}]]}))
    c.add("case-legacy-subnet-capital", lambda s: with_ipam(s, {
        "type": "host-local", "dataDir": "@DATA@", "Subnet": s.v4net, "RangeStart": s.v4(70),
        "rangeend": s.v4(80), "GATEWAY": s.v4(1)}))
    c.add("case-legacy-subnet-upper-only", lambda s: with_ipam(s, {"type": "host-local", "dataDir": "@DATA@",
                                                                   "SUBNET": s.v4net}))
    c.add("case-routes-capital", lambda s: with_ipam(s, {**ipam(s), "Routes": [{"dst": "198.51.100.0/24"}]}))
    c.add("case-route-keys-capital", lambda s: with_ipam(s, {
        **ipam(s), "routes": [{"Dst": "198.51.100.0/24", "GW": s.v4(254)}, {"DST": "203.0.113.0/24"}]}))
    c.add("case-route-gw-mixed", lambda s: with_ipam(s, {
        **ipam(s, v6=True), "routes": [{"dst": "2001:db8:1::/48", "gW": s.v6(0xfe)}]}))
    c.add("case-datadir-capital", lambda s: with_ipam(s, {"type": "host-local", "DataDir": "@DATA@",
                                                          "ranges": ranges(s.v4net)}))
    c.add("case-ipam-all-upper", lambda s: with_ipam(s, {
        "TYPE": "host-local", "DATADIR": "@DATA@", "RANGES": [[{"SUBNET": s.v4net, "RANGESTART": s.v4(90)}]],
        "ROUTES": [{"DST": "0.0.0.0/0"}]}))
    c.add("case-ipam-type-value-upper", lambda s: with_ipam(s, {"type": "HOST-LOCAL", "dataDir": "@DATA@",
                                                                "ranges": ranges(s.v4net)}),
          why="keys fold, values do not: no plugin is called HOST-LOCAL")


def _key_case_dns(c: Corpus) -> None:
    c.add("case-dns-keys-capital", lambda s: net(s, dns={"Nameservers": ["198.51.100.53", "2001:db8::53"],
                                                         "Domain": "svc.test", "Search": ["a.test"],
                                                         "Options": ["ndots:3"]}))
    c.add("case-dns-keys-upper", lambda s: net(s, Dns={"NAMESERVERS": ["198.51.100.54"], "SEARCH": ["b.test"]}))


def _key_case_runtime(c: Corpus) -> None:
    c.add("case-rc-capital", lambda s: net(s, RuntimeConfig=ports(s)))
    c.add("case-portmappings-capital", lambda s: net(s, runtimeConfig={"PortMappings": [pm(s)]}))
    c.add("case-pm-keys-capital", lambda s: net(s, runtimeConfig={"portMappings": [
        {"HostPort": s.port(), "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]}),
        why="containerd's CRI plugin (go-cni structs without JSON tags)")
    c.add("case-pm-keys-lower", lambda s: net(s, runtimeConfig={"portMappings": [
        {"hostport": s.port(), "containerport": 8080, "protocol": "udp", "hostip": ""}]}))
    c.add("case-pm-hostip-capital", lambda s: net(s, runtimeConfig={"portMappings": [
        {"hostPort": s.port(), "containerPort": 80, "protocol": "tcp", "HostIP": "127.0.0.1"}]}))
    c.add("case-pm-long-s", lambda s: net(s, runtimeConfig={"portMappings": [
        {"hoſtPort": s.port(), "containerPort": 80, "protocol": "tcp"}]}), why="ſ folds to s")
    c.add("case-pm-keys-capital-dual", lambda s: net(s, v6=True, runtimeConfig={"portMappings": [
        {"HostPort": s.port(0), "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
        {"HostPort": s.port(1), "ContainerPort": 53, "Protocol": "udp", "HostIP": ""}]}))
    c.add("case-rc-ips-capital", lambda s: net(s, v6=True, runtimeConfig={"IPs": [s.v4(78), s.v6(0x78)]}))
    c.add("case-rc-mac-capital", lambda s: net(s, RuntimeConfig={"Mac": "02:cb:00:00:01:02"}))
    c.add("case-rc-ipranges-capital", lambda s: net(s, ipam=ipam_without_ranges(), runtimeConfig={
        "IPRanges": [[{"subnet": s.v4net, "rangeStart": s.v4(100)}]]}))
    c.add("case-rc-ipranges-keys-capital", lambda s: net(s, ipam=ipam_without_ranges(), runtimeConfig={"ipRanges": [[
        {"Subnet": s.v4net, "RangeStart": s.v4(110), "RangeEnd": s.v4(120), "Gateway": s.v4(1)}]]}))
    c.add("case-rc-ipranges-empty-strings", lambda s: net(s, ipam=ipam_without_ranges(), runtimeConfig={"ipRanges": [[
        {"Subnet": s.v4net, "RangeStart": "", "RangeEnd": "", "Gateway": ""}]]}),
        why="go-cni's IPRanges struct always sends every field, empty when unset")
    c.add("case-rc-ipranges-prepended", lambda s: without_gateway(net(s, v6=True, runtimeConfig={"ipRanges": [[
        {"subnet": s.other_v4net}]]})),
        why="host-local puts the runtime's range sets before ipam.ranges: three addresses")
    c.add("case-rc-all-capital", lambda s: net(s, RUNTIMECONFIG={
        "PORTMAPPINGS": [{"HOSTPORT": s.port(), "CONTAINERPORT": 80, "PROTOCOL": "tcp"}],
        "IPS": [s.v4(79)], "MAC": "02:cb:00:00:01:03"}))


def _key_case_args(c: Corpus) -> None:
    c.add("case-args-capital", lambda s: net(s, Args={"cni": {"ips": [s.v4(81)]}}))
    c.add("case-args-cni-upper", lambda s: net(s, args={"CNI": {"IPs": [s.v4(82)]}}))
    c.add("case-args-mac-capital", lambda s: net(s, args={"cni": {"Mac": "02:cb:00:00:02:01"}}))
    c.add("case-args-mac-upper-l2", lambda s: {"cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@",
                                               "ARGS": {"Cni": {"MAC": "02:cb:00:00:02:02"}}})
    c.add("case-args-ips-cidr", lambda s: net(s, args={"cni": {"IPS": [f"{s.v4(83)}/24"]}}))
    c.add("case-args-labels-ignored", lambda s: net(s, args={"cni": {"labels": [{"key": "app", "value": "web"}],
                                                                    "ips": [s.v4(84)]}}))


def _prev_results(c: Corpus) -> None:
    c.add("prev-loopback", lambda s: net(s, prevResult=loopback_result()))
    c.add("prev-key-capital", lambda s: net(s, PrevResult=loopback_result()))
    c.add("prev-inner-keys-capital", lambda s: net(s, prevResult={
        "CNIVersion": "1.0.0", "Interfaces": [{"Name": "lo", "Mac": "00:00:00:00:00:00", "Sandbox": "@NETNS@"}],
        "IPs": [{"Interface": 0, "Address": "127.0.0.1/8"}], "DNS": {}}))
    c.add("prev-unknown-keys", lambda s: net(s, prevResult=loopback_result(extra={"x": 1}, routes=[])))
    c.add("prev-null", lambda s: net(s, prevResult=None))
    c.add("prev-0.3.1", lambda s: net(s, version="0.3.1", prevResult={
        "cniVersion": "0.3.1", "interfaces": [{"name": "lo", "sandbox": "@NETNS@"}],
        "ips": [{"version": "4", "interface": 0, "address": "127.0.0.1/8"}]}))
    c.add("prev-eth0-taken", lambda s: net(s, prevResult=loopback_result(
        interfaces=[{"name": "eth0", "sandbox": "@NETNS@"}], ips=[])),
        differs="prev-result-used", why="cni-bridge refuses a prevResult that already made CNI_IFNAME")
    c.add("prev-bad-address", lambda s: net(s, prevResult=loopback_result(
        ips=[{"interface": 0, "address": "nonsense"}])),
          differs="prev-result-used", why="the reference bridge never reads prevResult; cni-bridge appends to it")
    c.add("prev-not-object", lambda s: net(s, prevResult="not a result"))


def _duplicates(c: Corpus) -> None:
    """A key given twice, spelt the same or otherwise: the last one wins, objects merge."""
    def pm_text(s: Slot, entry: str) -> str:
        return raw(*base_members(s), '"runtimeConfig": {"portMappings": [' + entry + "]}")

    c.add("dup-hostport-exact-then-capital", lambda s: pm_text(
        s, f'{{"hostPort": 1, "HostPort": {s.port()}, "containerPort": 80, "protocol": "tcp"}}'))
    c.add("dup-hostport-capital-then-exact", lambda s: pm_text(
        s, f'{{"HostPort": 1, "hostPort": {s.port()}, "containerPort": 80, "protocol": "tcp"}}'))
    c.add("dup-hostport-valid-then-zero", lambda s: pm_text(
        s, f'{{"hostPort": {s.port()}, "HOSTPORT": 0, "containerPort": 80, "protocol": "tcp"}}'),
        why="the last spelling wins even when it is the wrong one")
    c.add("dup-protocol", lambda s: pm_text(
        s, f'{{"hostPort": {s.port()}, "containerPort": 53, "protocol": "tcp", "Protocol": "udp"}}'))
    c.add("dup-hostip", lambda s: pm_text(
        s, f'{{"hostPort": {s.port()}, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1", "HostIP": ""}}'))
    c.add("dup-mtu-exact-then-upper", lambda s: raw(*base_members(s), member("mtu", 1400), member("MTU", 1300)))
    c.add("dup-mtu-upper-then-exact", lambda s: raw(*base_members(s), member("MTU", 1300), member("mtu", 1400)))
    c.add("dup-mtu-exact-twice", lambda s: raw(*base_members(s), member("mtu", 1300), member("mtu", 1450)))
    c.add("dup-mtu-valid-then-null", lambda s: raw(*base_members(s), member("mtu", 1350), member("Mtu", None)),
          why="null leaves an int as it was")
    c.add("dup-bridge", lambda s: raw(*base_members(s, skip=("bridge",)), member("bridge", "@BR@"),
                                      member("Bridge", "@BR2@")))
    c.add("dup-name-valid-then-invalid", lambda s: raw(*base_members(s), member("Name", "not a name!")),
          no_usable_name=True)
    c.add("dup-name-invalid-then-valid", lambda s: raw(member("NAME", "not a name!"), *base_members(s)))
    c.add("dup-cniversion", lambda s: raw(member("cniVersion", "1.0.0"), member("name", "@NET@"),
                                          member("bridge", "@BR@"), member("CNIVersion", "0.2.0"),
                                          member("ipam", {"type": "host-local", "dataDir": "@DATA@", "ranges": [
                                              [{"subnet": s.v4net}], [{"subnet": s.other_v4net}]]})),
          why="the later 0.2.0 wins, and 0.2.0 allows one address per family")
    c.add("dup-ipam-objects-merge", lambda s: raw(*base_members(s, skip=("ipam",)),
                                                  member("ipam", {"type": "host-local", "dataDir": "@DATA@"}),
                                                  member("IPAM", {"ranges": ranges(s.v4net, s.v6net)})),
          why="a second object for the same field merges into the first")
    c.add("dup-ipam-exact-merge", lambda s: raw(*base_members(s, skip=("ipam",)),
                                                member("ipam", {"type": "host-local", "dataDir": "@DATA@"}),
                                                member("ipam", {"ranges": ranges(s.v4net)})))
    c.add("dup-ipam-type-reset", lambda s: raw(*base_members(s, skip=("ipam",)), member("ipam", ipam(s)),
                                               member("Ipam", {"type": ""})),
          why="the merged ipam has type \"\": layer 2 only")
    c.add("dup-runtimeconfig-merge", lambda s: raw(*base_members(s), member("runtimeConfig", ports(s)),
                                                   member("RuntimeConfig", {"mac": "02:cb:00:00:03:01"})))
    c.add("dup-portmappings-merge-elements", lambda s: raw(
        *base_members(s), member("runtimeConfig", {
            "portMappings": [pm(s, 0, 80, "udp")], "PortMappings": [{"hostPort": s.port(1), "containerPort": 81}]})),
        why="Go decodes the second array into the first one's elements: protocol udp survives")
    c.add("dup-ranges-subnet", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": [[
        {"subnet": s.other_v4net, "Subnet": s.v4net}]]}))
    c.add("dup-datadir-then-null", lambda s: raw(*base_members(s, skip=("ipam",)), member("ipam", {
        "type": "host-local", "ranges": ranges(s.v4net), "dataDir": "@DATA@", "DataDir": None})),
        why="null leaves the string as it was: the store stays in @DATA@")
    c.add("dup-ranges-then-null", lambda s: raw(*base_members(s, skip=("ipam",)), member("ipam", {
        "type": "host-local", "dataDir": "@DATA@", "subnet": s.v4net, "ranges": ranges(s.other_v4net),
        "Ranges": None})),
        why="null makes a slice nil: only the legacy subnet is left")
    c.add("dup-portmappings-then-null", lambda s: raw(*base_members(s), member("runtimeConfig", {
        "portMappings": [pm(s)], "PortMappings": None})), why="null makes a slice nil: nothing is published")
    c.add("dup-prevresult-then-null", lambda s: raw(*base_members(s), member("prevResult", loopback_result(
        interfaces=[{"name": "eth0", "sandbox": "@NETNS@"}], ips=[])), member("PrevResult", None)),
        why="null makes the map nil: no prevResult, so eth0 is free")
    c.add("dup-isgateway-null", lambda s: raw(*base_members(s), member("IsGateway", None)),
          why="null keeps isGateway true")


def _unknown_keys(c: Corpus) -> None:
    c.add("unknown-top", lambda s: net(s, frobnicate=True, podman_labels={"a": "b"}, somethingElse=[1, None]))
    c.add("unknown-range", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                  "ranges": [[{"subnet": s.v4net, "frobnicate": "x"}]]}))
    c.add("unknown-route", lambda s: net(s, ipam={**ipam(s), "routes": [{"dst": "198.51.100.0/24", "metric": 5,
                                                                         "frobnicate": None}]}))
    c.add("unknown-dns", lambda s: net(s, dns={"nameservers": ["198.51.100.53"], "frobnicate": True}))
    c.add("unknown-portmapping", lambda s: net(s, runtimeConfig=ports(s, pm(s, frobnicate=1, hostPortRange=3))))
    c.add("unknown-capabilities", lambda s: net(s, capabilities={"portMappings": True, "frobnicate": True},
                                                runtimeConfig=ports(s)))
    c.add("unknown-capabilities-not-bool", lambda s: net(s, capabilities={"frobnicate": "yes"}),
          why="bridge reads capabilities as map[string]bool: a string value is a decode error")
    c.add("unknown-everywhere", lambda s: {
        "cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@", "isGateway": True, "x1": 1,
        "ipam": {"type": "host-local", "dataDir": "@DATA@", "x2": 2,
                 "ranges": [[{"subnet": s.v4net, "x3": 3}]], "routes": [{"dst": "0.0.0.0/0", "x4": 4}]},
        "dns": {"x5": 5}, "runtimeConfig": {"x6": 6, "portMappings": [pm(s, x7=7)]}, "args": {"x8": 8}})


def _nulls(c: Corpus) -> None:
    def without(conf: Config, *keys: str) -> Config:
        return {k: v for k, v in conf.items() if k not in keys}

    c.add("null-name", lambda s: {**net(s), "name": None}, no_usable_name=True)
    c.add("null-cniversion", lambda s: {**net(s), "cniVersion": None}, why="0.1.0, as if absent")
    c.add("null-bridge", lambda s: {**without(net(s), "isGateway"), "bridge": None},
          why="the default bridge name; no gateway, so the default bridge may hold several subnets")
    c.add("null-isgateway", lambda s: {**net(s), "isGateway": None})
    c.add("null-ipmasq", lambda s: net(s, ipMasq=None))
    c.add("null-mtu", lambda s: net(s, mtu=None))
    c.add("null-ipam", lambda s: {**net(s), "ipam": None}, why="bridge: no IPAM type, so layer 2")
    c.add("null-ipam-type", lambda s: net(s, ipam={**ipam(s), "type": None}))

    # "" is Go's zero value for a string: the plugins read it as "not set".
    c.add("empty-ipam-type", lambda s: net(s, ipam={"type": ""}), why="type \"\" is no IPAM: layer 2")
    c.add("empty-ipam-type-with-ranges", lambda s: net(s, ipam={**ipam(s), "type": ""}))
    c.add("empty-rc-mac", lambda s: net(s, runtimeConfig={"mac": ""}))
    c.add("empty-args-mac", lambda s: net(s, args={"cni": {"mac": ""}}))
    c.add("empty-datadir", lambda s: net(s, ipam={**ipam(s), "dataDir": ""}),
          why="the default store (a tmpfs in the test's mount namespace)")
    c.add("empty-resolvconf", lambda s: net(s, ipam={**ipam(s), "resolvConf": ""}))
    c.add("empty-range-fields", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": [[
        {"subnet": s.v4net, "rangeStart": "", "rangeEnd": "", "gateway": ""}]]}))
    c.add("empty-legacy-fields", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                        "subnet": s.v4net, "rangeStart": "", "gateway": ""}))
    c.add("empty-route-gw", lambda s: net(s, ipam={**ipam(s), "routes": [{"dst": "198.51.100.0/24", "gw": ""}]}))
    c.add("dup-ipam-then-null", lambda s: raw(*base_members(s), member("IPAM", None)), differs="null-clears",
          why="bridge keeps its ipam struct (host-local is called), host-local's *IPAMConfig becomes nil")
    c.add("null-ipam-ranges-with-subnet", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                                 "subnet": s.v4net, "ranges": None}))
    c.add("null-ipam-ranges-only", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                          "ranges": None}))
    c.add("null-range-set", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": [None]}))
    c.add("null-range", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": [[None]]}))
    c.add("null-range-fields", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": [[
        {"subnet": s.v4net, "rangeStart": None, "rangeEnd": None, "gateway": None}]]}))
    c.add("null-range-subnet", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                      "ranges": [[{"subnet": None}]]}))
    c.add("null-routes", lambda s: net(s, ipam={**ipam(s), "routes": None}))
    c.add("null-route", lambda s: net(s, ipam={**ipam(s), "routes": [None]}))
    c.add("null-route-gw", lambda s: net(s, ipam={**ipam(s), "routes": [{"dst": "198.51.100.0/24", "gw": None}]}))
    c.add("null-dns", lambda s: net(s, dns=None))
    c.add("null-dns-fields", lambda s: net(s, dns={"nameservers": None, "domain": None, "search": None,
                                                   "options": None}))
    c.add("null-runtimeconfig", lambda s: net(s, runtimeConfig=None))
    c.add("null-portmappings", lambda s: net(s, runtimeConfig={"portMappings": None}))
    c.add("null-portmapping-entry", lambda s: net(s, runtimeConfig={"portMappings": [None]}),
          why="a null element is a zero mapping: host port 0")
    c.add("null-protocol", lambda s: net(s, runtimeConfig={"portMappings": [pm(s, protocol=None)]}),
          differs="protocol-defaults-to-tcp")
    c.add("null-hostip", lambda s: net(s, runtimeConfig={"portMappings": [pm(s, hostIP=None)]}))
    c.add("null-hostport", lambda s: net(s, runtimeConfig={"portMappings": [pm(s, hostPort=None)]}))
    c.add("null-rc-ips", lambda s: net(s, runtimeConfig={"ips": None, "mac": None, "ipRanges": None}))
    c.add("null-args", lambda s: net(s, args=None))
    c.add("null-datadir-with-exact", lambda s: net(s, ipam={**ipam(s), "DATADIR": None}))


def _wrong_types(c: Corpus) -> None:
    c.add("type-mtu-string", lambda s: net(s, mtu="1400"))
    c.add("type-mtu-float", lambda s: net(s, mtu=1400.0), why="Go refuses 1400.0 for an int")
    c.add("type-mtu-exponent", lambda s: raw(*base_members(s), '"mtu": 1.4e3'))
    c.add("type-mtu-huge", lambda s: raw(*base_members(s), '"mtu": 99999999999999999999'))
    c.add("type-isgateway-string", lambda s: net(s, isGateway="true"))
    c.add("type-ipmasq-string", lambda s: net(s, ipMasq="yes"))
    c.add("type-bridge-int", lambda s: {**net(s), "bridge": 5})
    c.add("type-name-int", lambda s: {**net(s), "name": 5}, no_usable_name=True)
    c.add("type-cniversion-number", lambda s: {**net(s), "cniVersion": 1.0})
    c.add("type-ipam-string", lambda s: {**net(s), "ipam": "host-local"})
    c.add("type-ranges-flat", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                     "ranges": [{"subnet": s.v4net}]}))
    c.add("type-subnet-int", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                    "ranges": [[{"subnet": 10}]]}))
    c.add("type-datadir-int", lambda s: net(s, ipam={**ipam(s), "DataDir": 5}))
    c.add("type-portmappings-object", lambda s: net(s, runtimeConfig={"portMappings": pm(s)}))
    c.add("type-hostport-string", lambda s: net(s, runtimeConfig=ports(s, pm(s, hostPort=str(s.port())))))
    c.add("type-containerport-fraction", lambda s: net(s, runtimeConfig=ports(s, pm(s, containerPort=80.5))))
    c.add("type-protocol-int", lambda s: net(s, runtimeConfig=ports(s, pm(s, protocol=6))))
    c.add("type-rc-ips-string", lambda s: net(s, runtimeConfig={"ips": s.v4(86)}))
    c.add("type-args-ips-string", lambda s: net(s, args={"cni": {"ips": s.v4(87)}}))
    c.add("type-dns-nameservers-string", lambda s: net(s, dns={"nameservers": "198.51.100.53"}))
    c.add("type-snat-string", lambda s: net(s, runtimeConfig=ports(s), snat="false"),
          why="portmap reads snat as a bool")


def _invalid_values(c: Corpus) -> None:
    def with_range(s: Slot, *rs: Config) -> Config:
        return net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": [list(rs)]})

    c.add("invalid-cidr-prefix", lambda s: with_range(s, {"subnet": "10.160.0.0/33"}))
    c.add("invalid-cidr-garbage", lambda s: with_range(s, {"subnet": "garbage"}))
    c.add("invalid-cidr-no-prefix", lambda s: with_range(s, {"subnet": s.v4(0)}))
    c.add("invalid-cidr-host-bits", lambda s: with_range(s, {"subnet": f"{s.v4(5)}/24"}))
    c.add("invalid-subnet-31", lambda s: with_range(s, {"subnet": f"{s.v4(0)}/31"}))
    c.add("valid-subnet-30", lambda s: with_range(s, {"subnet": f"{s.v4(0)}/30"}))
    c.add("invalid-ranges-overlap-in-set", lambda s: with_range(
        s, {"subnet": s.v4net, "rangeStart": s.v4(10), "rangeEnd": s.v4(50)},
        {"subnet": s.v4net, "rangeStart": s.v4(40), "rangeEnd": s.v4(60)}))
    c.add("valid-ranges-disjoint-in-set", lambda s: with_range(
        s, {"subnet": s.v4net, "rangeStart": s.v4(10), "rangeEnd": s.v4(20)},
        {"subnet": s.v4net, "rangeStart": s.v4(30), "rangeEnd": s.v4(40)}))
    c.add("invalid-ranges-overlap-across-sets", lambda s: net(s, ipam={
        "type": "host-local", "dataDir": "@DATA@", "ranges": ranges(s.v4net, s.v4net)}))
    c.add("invalid-range-start-outside", lambda s: with_range(s, {"subnet": s.v4net, "rangeStart": "198.51.100.1"}))
    c.add("invalid-range-start-after-end", lambda s: with_range(
        s, {"subnet": s.v4net, "rangeStart": s.v4(50), "rangeEnd": s.v4(40)}))
    c.add("invalid-range-start-garbage", lambda s: with_range(s, {"subnet": s.v4net, "rangeStart": "garbage"}))
    c.add("odd-gateway-outside-subnet", lambda s: with_range(s, {"subnet": s.v4net, "gateway": "198.51.100.1"}),
          differs="gateway-in-subnet", why="host-local never checks that the gateway is in the subnet")
    c.add("odd-two-v4-sets-gateway", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@",
                                                            "ranges": ranges(s.v4net, s.other_v4net)}),
          differs="gateway-per-range-set", why="the reference bridge takes one IPv4 gateway address only")
    c.add("invalid-ranges-empty", lambda s: net(s, ipam={"type": "host-local", "dataDir": "@DATA@", "ranges": []}))
    c.add("invalid-route-dst", lambda s: net(s, ipam={**ipam(s), "routes": [{"dst": "nonsense"}]}))
    c.add("odd-route-gw-other-family", lambda s: net(s, v6=True, ipam={**ipam(s, v6=True), "routes": [
        {"dst": "198.51.100.0/24", "gw": s.v6(1)}]}))
    c.add("invalid-hostport-zero", lambda s: net(s, runtimeConfig=ports(s, pm(s, hostPort=0))))
    c.add("invalid-hostport-too-big", lambda s: net(s, runtimeConfig=ports(s, pm(s, hostPort=70000))))
    c.add("invalid-containerport-zero", lambda s: net(s, runtimeConfig=ports(s, pm(s, containerPort=0))))
    c.add("invalid-protocol-icmp", lambda s: net(s, runtimeConfig=ports(s, pm(s, protocol="icmp"))))
    c.add("odd-protocol-empty", lambda s: net(s, runtimeConfig=ports(s, pm(s, protocol=""))),
          differs="protocol-defaults-to-tcp", why="portmap hands \"\" to iptables, which refuses it")
    c.add("odd-protocol-missing", lambda s: net(s, runtimeConfig=ports(s, {"hostPort": s.port(), "containerPort": 80})),
          differs="protocol-defaults-to-tcp")
    c.add("odd-protocol-upper", lambda s: net(s, runtimeConfig=ports(s, pm(s, protocol="TCP"))))
    c.add("odd-protocol-mixed-case", lambda s: net(s, runtimeConfig=ports(s, pm(s, protocol="Udp"))))
    c.add("odd-hostip-wildcard-v4", lambda s: net(s, v6=True, runtimeConfig=ports(s, pm(s, hostIP="0.0.0.0"))))
    c.add("odd-hostip-wildcard-v6", lambda s: net(s, v6=True, runtimeConfig=ports(s, pm(s, hostIP="::"))))
    c.add("odd-hostip-v6-on-v4-only", lambda s: net(s, runtimeConfig=ports(s, pm(s, hostIP="::1"))))
    c.add("invalid-hostip-garbage", lambda s: net(s, runtimeConfig=ports(s, pm(s, hostIP="not-an-ip"))),
          differs="host-ip-checked", why="portmap skips the mapping for an IPv4 container and publishes nothing")
    c.add("invalid-hostip-garbage-dual", lambda s: net(s, v6=True, runtimeConfig=ports(s, pm(s, hostIP="not-an-ip"))),
          why="portmap takes the unparsable address for IPv6 and hands it to ip6tables")
    c.add("odd-same-hostport-twice", lambda s: net(s, runtimeConfig=ports(s, pm(s, 0, 80), pm(s, 0, 81))))
    c.add("odd-same-hostport-tcp-udp", lambda s: net(s, runtimeConfig=ports(s, pm(s, 0, 53, "tcp"),
                                                                             pm(s, 0, 53, "udp"))))
    c.add("invalid-mac-garbage", lambda s: net(s, runtimeConfig={"mac": "zz:zz:zz:zz:zz:zz"}))
    c.add("invalid-mac-multicast", lambda s: net(s, runtimeConfig={"mac": "01:00:5e:00:00:01"}))
    c.add("odd-mac-hyphens", lambda s: net(s, runtimeConfig={"mac": "02-cb-00-00-04-01"}),
          why="Go's net.ParseMAC reads hyphens too")
    c.add("odd-mac-upper", lambda s: net(s, runtimeConfig={"mac": "02:CB:00:00:04:02"}))
    c.add("invalid-rc-ip-outside", lambda s: net(s, runtimeConfig={"ips": ["198.51.100.9"]}))
    c.add("invalid-rc-ip-garbage", lambda s: net(s, runtimeConfig={"ips": ["garbage"]}))
    c.add("invalid-rc-ip-gateway", lambda s: net(s, runtimeConfig={"ips": [s.v4(1)]}))
    c.add("odd-rc-ip-cidr-other-prefix", lambda s: net(s, runtimeConfig={"ips": [f"{s.v4(88)}/16"]}))
    c.add("invalid-bridge-too-long", lambda s: {**net(s), "bridge": "cbt-much-too-long-name"})
    c.add("invalid-bridge-slash", lambda s: {**net(s), "bridge": "cbt/x"})
    c.add("odd-bridge-empty", lambda s: {**without_gateway(net(s)), "bridge": ""})
    c.add("invalid-name-space", lambda s: {**net(s), "name": "not a name"}, no_usable_name=True)
    c.add("invalid-name-empty", lambda s: {**net(s), "name": ""}, no_usable_name=True)
    c.add("invalid-name-missing", lambda s: {k: v for k, v in net(s).items() if k != "name"}, no_usable_name=True)
    c.add("invalid-vlan-too-big", lambda s: net(s, vlan=5000))
    c.add("invalid-hairpin-and-promisc", lambda s: net(s, hairpinMode=True, promiscMode=True))
    c.add("odd-mtu-zero", lambda s: net(s, mtu=0), why="0 is Go's zero value: the default")
    c.add("odd-mtu-negative", lambda s: net(s, mtu=-1), why="netlink skips an MTU <= 0: the default")
    c.add("odd-mtu-small-v4", lambda s: net(s, mtu=576))
    c.add("invalid-mtu-small-v6", lambda s: net(s, v6=True, mtu=1000))
    c.add("invalid-mtu-too-big", lambda s: net(s, mtu=70000))
    c.add("invalid-cniversion-unknown", lambda s: net(s, version="9.9.9"))
    c.add("invalid-cniversion-empty", lambda s: net(s, version=""), why="\"\" is Go's zero value: 0.1.0")
    c.add("invalid-dns-nameserver", lambda s: net(s, dns={"nameservers": ["not-an-ip"]}))
    c.add("invalid-ipam-type-missing-plugin", lambda s: net(s, ipam={**ipam(s), "type": "cbt-no-such-plugin"}))
    c.add("invalid-markmasqbit", lambda s: net(s, runtimeConfig=ports(s), markMasqBit=32))
    c.add("invalid-mark-and-chain", lambda s: net(s, runtimeConfig=ports(s), markMasqBit=14,
                                                  externalSetMarkChain="KUBE-MARK-MASQ"))
    c.add("valid-snat-false", lambda s: net(s, runtimeConfig=ports(s), snat=False))
    c.add("valid-markmasqbit", lambda s: net(s, runtimeConfig=ports(s), markMasqBit=14))
    c.add("reference-conditions", lambda s: net(s, runtimeConfig=ports(s), conditionsV4=["!", "-s", "198.51.100.0/24"]),
          differs="unsupported-options", why="portmap 1.1.1 implements conditionsV4; cni-bridge refuses it (code 2)")
    c.add("reference-vlantrunk", lambda s: net(s, vlanTrunk=[{"id": 5}]), differs="unsupported-options",
          why="bridge 1.1.1 predates vlanTrunk and ignores it; later versions implement it")
    c.add("reference-macspoofchk", lambda s: net(s, macspoofchk=True), differs="unsupported-options",
          why="bridge 1.1.1 implements it with nft (build.sh installs nftables); cni-bridge refuses it (code 2)")
    c.add("reference-ipmasqbackend", lambda s: net(s, ipMasq=True, ipMasqBackend="nftables"),
          differs="backend-keys", why="bridge 1.1.1 predates ipMasqBackend and masquerades with iptables; "
          "cni-bridge masquerades in its nftables table, which iptables-save does not show")


def without_gateway(conf: Config) -> Config:
    return {k: v for k, v in conf.items() if k != "isGateway"}


def _own_keys(c: Corpus) -> None:
    """Keys only cni-bridge reads: the reference chain ignores them whatever they hold."""
    c.add("own-loglevel-bad", lambda s: net(s, logLevel="verbose"), differs="own-keys-checked")
    c.add("own-internal-with-ports", lambda s: net(s, internal=True, runtimeConfig=ports(s)),
          differs="own-keys-checked")
    c.add("own-isolate-string", lambda s: net(s, isolate="yes"), differs="own-keys-checked")
    c.add("own-ipmasqexclude-bad", lambda s: net(s, ipMasq=True, ipMasqExclude=["nonsense"]),
          differs="own-keys-checked")
    c.add("own-internal-valid", lambda s: net(s, internal=True))
    c.add("own-isolate-valid", lambda s: net(s, isolate=True))


def _runtimes(c: Corpus) -> None:
    """What the runtimes of this project's README really send, from their sources: containerd's
    go-cni (types.go, namespace_opts.go: capability structs without JSON tags), CRI-O's ocicni
    (pkg/ocicni/types.go: tagged PortMapping with hostIP always present, untagged bandwidth),
    podman 4's containers/common libnetwork/cni (run.go: CNI_ARGS IgnoreUnknown, K8S_POD_NAME,
    IP and MAC; cni_types.go: the bridge config it writes) and cnitool (CAP_ARGS, CNI_ARGS)."""
    # containerd 1.6, CRI plugin: K8S_POD_* CNI_ARGS, capitalised go-cni structs, pod annotations.
    def cri_pm(s: Slot, k: int = 0, port: int = 80, proto: str = "tcp", host_ip: str = "") -> Config:
        return {"HostPort": s.port(k), "ContainerPort": port, "Protocol": proto, "HostIP": host_ip}

    c.add("rt-containerd-cri-port", lambda s: net(s, runtimeConfig={
        "portMappings": [cri_pm(s)], "io.kubernetes.cri.pod-annotations": {"team": "web"}}), cni_args=containerd_args)
    c.add("rt-containerd-cri-ports-dual", lambda s: net(s, v6=True, ipMasq=True, runtimeConfig={
        "portMappings": [cri_pm(s, 0), cri_pm(s, 1, 53, "udp"), cri_pm(s, 2, 8443, "tcp", "127.0.0.1")]}),
        cni_args=containerd_args)
    c.add("rt-containerd-default-conflist", lambda s: {
        "cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@", "isGateway": True, "ipMasq": True,
        "promiscMode": True, "ipam": {"type": "host-local", "dataDir": "@DATA@",
                                      "ranges": ranges(s.v4net, s.v6net),
                                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]},
        "runtimeConfig": {"portMappings": [cri_pm(s)]}}, cni_args=containerd_args,
        why="containerd's 10-containerd-net.conflist template, with its CRI port mapping")
    c.add("rt-containerd-bandwidth", lambda s: net(s, runtimeConfig={
        "portMappings": [cri_pm(s)],
        "bandwidth": {"IngressRate": 1000000, "IngressBurst": 100000, "EgressRate": 1000000, "EgressBurst": 100000}}),
        cni_args=containerd_args)
    c.add("rt-containerd-dns-capability", lambda s: net(s, runtimeConfig={
        "dns": {"Servers": ["198.51.100.53"], "Searches": ["svc.test"], "Options": ["ndots:5"]}}),
        cni_args=containerd_args)
    c.add("rt-containerd-ipranges", lambda s: net(s, ipam=ipam_without_ranges(), runtimeConfig={"ipRanges": [[
        {"Subnet": s.v4net, "RangeStart": s.v4(150), "RangeEnd": s.v4(160), "Gateway": ""}]]}),
        cni_args=containerd_args)
    c.add("rt-containerd-ipranges-flat", lambda s: net(s, ipam=ipam_without_ranges(), runtimeConfig={"ipRanges": [
        {"Subnet": s.v4net, "RangeStart": "", "RangeEnd": "", "Gateway": ""}]}), cni_args=containerd_args,
        why="go-cni's WithCapabilityIPRanges takes a flat list; host-local wants range sets")
    c.add("rt-containerd-ctr-run", lambda s: net(s, ipMasq=True), cni_args="IgnoreUnknown=1",
          why="ctr run --cni: no capability arguments")
    # CRI-O: ocicni's tagged structs (lowercase, hostIP always present), bandwidth untagged.
    c.add("rt-crio-port", lambda s: net(s, runtimeConfig={"portMappings": [
        {"hostPort": s.port(), "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}), cni_args=crio_args)
    c.add("rt-crio-ports-and-ranges", lambda s: net(s, ipam=ipam_without_ranges(), runtimeConfig={
        "portMappings": [{"hostPort": s.port(0), "containerPort": 80, "protocol": "tcp", "hostIP": ""},
                         {"hostPort": s.port(1), "containerPort": 53, "protocol": "udp", "hostIP": ""}],
        "ipRanges": [[{"subnet": s.v4net, "rangeStart": s.v4(170)}], [{"subnet": s.v6net}]],
        "bandwidth": {"IngressRate": 1000, "IngressBurst": 10, "EgressRate": 1000, "EgressBurst": 10},
        "cgroupPath": "/kubepods/pod1", "io.kubernetes.cri.pod-annotations": {"a": "b"}}), cni_args=crio_args)
    c.add("rt-crio-default-conflist", lambda s: {
        "cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@", "isGateway": True, "ipMasq": True,
        "hairpinMode": True, "ipam": {"type": "host-local", "dataDir": "@DATA@",
                                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                                      "ranges": ranges(s.v4net, s.v6net)}}, cni_args=crio_args,
        why="CRI-O's 10-crio-bridge.conflist")
    c.add("rt-crio-hostip", lambda s: net(s, runtimeConfig={"portMappings": [
        {"hostPort": s.port(), "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]}), cni_args=crio_args)
    # podman 4 with the CNI backend: 0.4.0 lists, ips capability, static IP and MAC through CNI_ARGS.
    def podman(s: Slot, **extra: Any) -> Config:
        return {"cniVersion": "0.4.0", "name": "@NET@", "bridge": "@BR@", "isGateway": True, "ipMasq": True,
                "hairpinMode": True, "capabilities": {"ips": True},
                "ipam": {"type": "host-local", "dataDir": "@DATA@", "routes": [{"dst": "0.0.0.0/0"}],
                         "ranges": [[{"subnet": s.v4net, "gateway": s.v4(1)}]]}, **extra}

    c.add("rt-podman-plain", lambda s: podman(s), cni_args=podman_args)
    c.add("rt-podman-ports", lambda s: podman(s, runtimeConfig={"portMappings": [
        {"hostPort": s.port(0), "containerPort": 80, "protocol": "tcp"},
        {"hostPort": s.port(1), "containerPort": 81, "protocol": "tcp"},
        {"hostPort": s.port(2), "containerPort": 80, "protocol": "udp"}]}), cni_args=podman_args,
        why="podman -p 8000-8001:80-81 -p 8002:80/udp: one entry per port, hostIP left out")
    c.add("rt-podman-static-ip", lambda s: podman(s), cni_args=lambda s: podman_args(s, f"IP={s.v4(42)}"))
    c.add("rt-podman-static-mac", lambda s: podman(s),
          cni_args=lambda s: podman_args(s, "MAC=02:cb:00:00:05:01"))
    c.add("rt-podman-two-ips", lambda s: {**podman(s, runtimeConfig={"ips": [s.v4(43), s.v6(0x43)]}),
                                          "ipam": {"type": "host-local", "dataDir": "@DATA@",
                                                   "ranges": ranges(s.v4net, s.v6net)}},
          cni_args=podman_args)
    c.add("rt-podman-aliases", lambda s: podman(s, runtimeConfig={"aliases": {"@NET@": ["web", "www"]}}),
          cni_args=podman_args)
    # cnitool: CAP_ARGS and CNI_ARGS as the user wrote them.
    c.add("rt-cnitool-cap-args", lambda s: net(s, runtimeConfig={"portMappings": [pm(s)]}))
    c.add("rt-cnitool-ip-ignoreunknown", lambda s: net(s), cni_args=lambda s: f"IgnoreUnknown=1;IP={s.v4(44)}")
    c.add("rt-cnitool-ip-bare", lambda s: net(s), cni_args=lambda s: f"IP={s.v4(45)}",
          differs="cni-args-one-plugin", why="the reference bridge does not know IP; cni-bridge knows IP and MAC")
    c.add("rt-cnitool-mac-bare", lambda s: net(s), cni_args="MAC=02:cb:00:00:05:02",
          differs="cni-args-one-plugin", why="host-local does not know MAC")


def _cni_args(c: Corpus) -> None:
    c.add("cniargs-ignoreunknown-true", lambda s: net(s), cni_args="IgnoreUnknown=true;FOO=bar")
    c.add("cniargs-ignoreunknown-zero", lambda s: net(s), cni_args="IgnoreUnknown=0;FOO=bar")
    c.add("cniargs-ignoreunknown-bad", lambda s: net(s), cni_args="IgnoreUnknown=maybe")
    c.add("cniargs-ignoreunknown-key-lower", lambda s: net(s), cni_args="ignoreunknown=1;FOO=bar",
          why="CNI_ARGS keys are matched case-sensitively")
    c.add("cniargs-unknown-only", lambda s: net(s), cni_args="FOO=bar")
    c.add("cniargs-trailing-semicolon", lambda s: net(s), cni_args="IgnoreUnknown=1;")
    c.add("cniargs-value-with-equals", lambda s: net(s), cni_args="IgnoreUnknown=1;K8S_POD_NAME=a=b")
    c.add("cniargs-ip-lowercase-key", lambda s: net(s), cni_args=lambda s: f"IgnoreUnknown=1;ip={s.v4(46)}")
    c.add("cniargs-ip-garbage", lambda s: net(s), cni_args="IgnoreUnknown=1;IP=garbage")
    c.add("cniargs-ip-cidr", lambda s: net(s), cni_args=lambda s: f"IgnoreUnknown=1;IP={s.v4(47)}/24")
    c.add("cniargs-mac-l2-bare", lambda s: {"cniVersion": "1.0.0", "name": "@NET@", "bridge": "@BR@"},
          cni_args="MAC=02:cb:00:00:06:01", why="no IPAM: only bridge reads CNI_ARGS, and it knows MAC")
    c.add("cniargs-mac-garbage", lambda s: net(s), cni_args="IgnoreUnknown=1;MAC=garbage")
    c.add("cniargs-precedence", lambda s: net(s, runtimeConfig={"mac": "02:cb:00:00:06:02"},
                                              args={"cni": {"mac": "02:cb:00:00:06:03"}}),
          cni_args="IgnoreUnknown=1;MAC=02:cb:00:00:06:04")


def build() -> tuple[Case, ...]:
    corpus = Corpus()
    for part in (_baselines, _key_case_top, _key_case_ipam, _key_case_dns, _key_case_runtime, _key_case_args,
                 _prev_results, _duplicates, _unknown_keys, _nulls, _wrong_types, _invalid_values, _own_keys,
                 _runtimes, _cni_args):
        part(corpus)
    ids = [case.id for case in corpus.cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate case ids: {duplicates}"
    return tuple(corpus.cases)


CASES = build()
