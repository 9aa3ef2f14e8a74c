"""Benchmark through libcni, the way container runtimes call a plugin: cni-bridge on each
firewall backend, cold (CNI_BRIDGE_HELPER=0) and with its warm helper (the default settings),
next to the reference chain (bridge + host-local + portmap from /usr/lib/cni), interleaved in
one run.

Run as root: ./build.sh bench [--runs N] [--crowd N] [--cases KEY,...] [--port-keys lowercase|containerd]

The plugins are called by bench/libcni (a small Go program built by `./build.sh bench`
against Debian's libcni): AddNetworkList and DelNetworkList with the result cache in a temp
dir, the published port passed as CapabilityArgs, the way runtimes pass it. The Go program
stays up, so only the library call and the plugin processes are timed, and it reads each
plugin process's rusage when it reaps it (wait4): the peak RSS of the plugin, never of the
client.

Each case is a network in its own throwaway node namespace: IPv4, isGateway, ipMasq, one
published TCP port per container. "1 container" networks have one resident container and a
/24; "crowd" networks have --crowd residents (each publishing its own host port) and a /23,
set up once, untimed. A run times ADD and then DEL of one more container on every network,
in random order; run 0 is a warm-up. Ctrl-C or an error removes every namespace and temp dir.

Not a test: timing assertions would only make the suite flaky.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import nstools, warm  # noqa: E402
from tests.conftest import _host_snapshot  # noqa: E402
from tests.plugin import PATH, REF_DIR, Container, Node  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = os.environ.get("CNI_BRIDGE_BIN") or str(ROOT / "dist" / "cni-bridge")
CLIENT = os.environ.get("CNI_LIBCNI_BENCH") or str(ROOT / "build" / "bench" / "cni-libcni-bench")
PYTHON = "/usr/bin/python3"

HOST_PORT = 8080  # of the timed container; resident i publishes RESIDENT_PORTS + i
RESIDENT_PORTS = 20000
SUBNET_ONE = "10.91.0.0/24"
SUBNET_CROWD = "10.92.0.0/23"  # a /24 has 253 addresses for containers: too few for 300
NA_NOT_IN_BUILD = "n/a (not in this build)"


class BenchError(Exception):
    pass


# --- the cases ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """Where one network lives: its bridge, subnet and the directories of its node."""

    bridge: str
    subnet: str
    data_dir: str
    state_dir: str


PluginsFor = Callable[[Place], list[dict[str, Any]]]


def host_local(place: Place) -> dict[str, Any]:
    return {"type": "host-local", "dataDir": place.data_dir, "ranges": [[{"subnet": place.subnet}]]}


def cni_bridge_list(backend: str) -> PluginsFor:
    def plugins(place: Place) -> list[dict[str, Any]]:
        return [{"type": "cni-bridge", "bridge": place.bridge, "isGateway": True, "ipMasq": True,
                 "firewallBackend": backend, "stateDir": place.state_dir, "ipam": host_local(place),
                 "capabilities": {"portMappings": True}}]
    return plugins


def reference_list(nftables: bool) -> PluginsFor:
    def plugins(place: Place) -> list[dict[str, Any]]:
        bridge: dict[str, Any] = {"type": "bridge", "bridge": place.bridge, "isGateway": True, "ipMasq": True,
                                  "ipam": host_local(place)}
        portmap: dict[str, Any] = {"type": "portmap", "capabilities": {"portMappings": True}}
        if nftables:
            bridge["ipMasqBackend"] = "nftables"
            portmap["backend"] = "nftables"
        return [bridge, portmap]
    return plugins


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    plugins: PluginsFor
    env: dict[str, str]  # the client's environment, which libcni hands on to the plugins
    rules_in: str  # where its rules must appear: iptables-nft, iptables-legacy or nftables
    ours: bool
    unavailable: str | None = None
    helper: bool = False  # through the warm helper (on by default); the other cases of ours run cold


COLD = {"CNI_BRIDGE_HELPER": "0"}


def host_iptables_flavour() -> str:
    """The flavour the reference plugins' `iptables` is (Debian's alternatives)."""
    return "iptables-nft" if "nft" in os.path.realpath(shutil.which("iptables", path=PATH) or "") else "iptables-legacy"


def reference_nftables_missing() -> str | None:
    """Why the installed reference plugins have no nftables mode, or None if they have one.
    Go keeps struct tags in the binary: a key the plugin decodes appears as `json:"key`."""
    missing = [f"{plugin} has no {key}" for plugin, key in (("bridge", "ipMasqBackend"), ("portmap", "backend"))
               if f'json:"{key}'.encode() not in Path(REF_DIR, plugin).read_bytes()]
    if not missing:
        return None
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                             capture_output=True, text=True).stdout or "?"
    return f"n/a (Debian's containernetworking-plugins {version}: {', '.join(missing)})"


def all_cases() -> list[Case]:
    return [
        Case("nft", "cni-bridge iptables (nft)", cni_bridge_list("iptables"),
             {"CNI_BRIDGE_IPTABLES": "nft", **COLD}, "iptables-nft", ours=True),
        Case("legacy", "cni-bridge iptables (legacy)", cni_bridge_list("iptables"),
             {"CNI_BRIDGE_IPTABLES": "legacy", **COLD}, "iptables-legacy", ours=True),
        Case("nftables", "cni-bridge nftables", cni_bridge_list("nftables"), COLD, "nftables", ours=True),
        # The default settings: the helper starts on the first call (the warm-up run) and
        # serves every timed one.
        Case("warm-nft", "cni-bridge iptables (nft), warm helper", cni_bridge_list("iptables"),
             {"CNI_BRIDGE_IPTABLES": "nft"}, "iptables-nft", ours=True, helper=True),
        Case("warm-nftables", "cni-bridge nftables, warm helper", cni_bridge_list("nftables"), {}, "nftables",
             ours=True, helper=True),
        Case("ref", "reference bridge+portmap (iptables)", reference_list(False), {}, host_iptables_flavour(),
             ours=False),
        Case("ref-nftables", "reference bridge+portmap (nftables)", reference_list(True), {}, "nftables",
             ours=False, unavailable=reference_nftables_missing()),
    ]


# --- the Go client --------------------------------------------------------------------------

class LibcniClient:
    """bench/libcni serving one network list inside a node namespace."""

    def __init__(self, node: str, conflist: str, cache_dir: str, plugin_path: Sequence[str],
                 env: dict[str, str]) -> None:
        # `env -i`: the client, and through libcni the plugins, see only this environment. The
        # single file's bundle cache goes with it (see main), never the host's.
        cache = {"CNI_BRIDGE_CACHE_DIR": os.environ["CNI_BRIDGE_CACHE_DIR"]} if "CNI_BRIDGE_CACHE_DIR" in os.environ else {}
        environment = [f"{k}={v}" for k, v in {"PATH": PATH, **cache, **env}.items()]
        argv = ["ip", "netns", "exec", node, "env", "-i", *environment,
                CLIENT, "-conflist", conflist, "-cache", cache_dir, "-path", ":".join(plugin_path)]
        # Its own session: Ctrl-C reaches this script only, which then stops the client itself.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def ask(self, **request: Any) -> dict[str, Any]:
        stdin, stdout = self._pipes()
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise BenchError(f"the libcni client stopped (exit status {self.proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    def close(self) -> None:
        try:
            self._pipes()[0].close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            # The client's own process group: itself and a plugin it may be running.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- one network ----------------------------------------------------------------------------

@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    rss_kib: dict[str, list[int]] = field(default_factory=dict)  # per plugin executable

    def add(self, answer: dict[str, Any]) -> None:
        self.seconds.append(answer["seconds"])
        for call in answer.get("calls") or []:
            self.rss_kib.setdefault(call["plugin"], []).append(call["maxRSSKiB"])


class Network:
    """A case's network in its own node namespace, with its resident containers."""

    def __init__(self, case: Case, residents: int, subnet: str, plugin_dir: str, port_keys: str) -> None:
        self.case = case
        self.resident_count = residents
        self.port_keys = port_keys
        self.node = Node()
        self.residents: list[tuple[str, Container]] = []
        self.samples = {"ADD": Samples(), "DEL": Samples()}
        self.setup_seconds: list[float] = []
        self.rules_found = ""
        self.client: LibcniClient | None = None
        try:
            work = self.node.temp_dir()
            place = Place(self.node.bridge_name(), subnet, f"{work}/ipam", f"{work}/state")
            self.state_dir = place.state_dir
            conflist = f"{work}/bench.conflist"
            Path(conflist).write_text(json.dumps(
                {"cniVersion": "1.0.0", "name": "bench", "plugins": case.plugins(place)}, indent=2))
            path = [plugin_dir, REF_DIR] if case.ours else [REF_DIR]
            self.client = LibcniClient(self.node.name, conflist, f"{work}/cache", path, case.env)
        except BaseException:
            self.close()
            raise

    @property
    def label(self) -> str:
        return f"{self.case.label}, {self.resident_count} resident{'s' if self.resident_count > 1 else ''}"

    def request(self, command: str, cid: str, container: Container, host_port: int) -> dict[str, Any]:
        assert self.client is not None
        return self.client.ask(op=command.lower(), containerID=cid, netns=container.path, ifName="eth0",
                               hostPort=host_port, portKeys=self.port_keys)

    def must(self, command: str, cid: str, container: Container, host_port: int) -> dict[str, Any]:
        answer = self.request(command, cid, container, host_port)
        if answer.get("error"):
            raise BenchError(f"{self.label}: {command} {cid}: {answer['error']}")
        if command == "ADD" and not (answer.get("result") or {}).get("ips"):
            raise BenchError(f"{self.label}: ADD {cid} gave no address: {answer.get('result')}")
        return answer

    def populate(self) -> str | None:
        """ADD the residents (untimed). None, or why the case cannot run in this build."""
        for i in range(self.resident_count):
            cid, container = f"resident{i}", self.node.add_container()
            answer = self.request("ADD", cid, container, RESIDENT_PORTS + i)
            if i == 0:
                refusal = self._first_add(answer)
                if refusal is not None:
                    return refusal
            if answer.get("error"):
                raise BenchError(f"{self.label}: ADD {cid}: {answer['error']}")
            self.residents.append((cid, container))
            self.setup_seconds.append(answer["seconds"])
            if self.resident_count > 1 and (i + 1) % 50 == 0:
                progress(f"  {self.case.label}: {i + 1} of {self.resident_count} containers")
        return None

    def _first_add(self, answer: dict[str, Any]) -> str | None:
        """The first ADD shows whether the plugin did what the case asks for: a build that
        refuses the key, or that ignores it and programs another firewall, is not the case."""
        if answer.get("error"):
            if self.case.ours and self.case.rules_in == "nftables":
                return f"{NA_NOT_IN_BUILD}: {answer['error'][:120]}"
            raise BenchError(f"{self.label}: first ADD: {answer['error']}")
        places = rule_places(self.node)
        self.rules_found = " + ".join(places) or "none"
        # nftables may come with some iptables besides: the column shows it, the case runs.
        if self.rules_found == self.case.rules_in or (self.case.rules_in == "nftables" and "nftables" in places):
            return None
        if self.case.ours and self.case.rules_in == "nftables":
            return f'{NA_NOT_IN_BUILD}: firewallBackend "nftables" was ignored, the rules went to {self.rules_found}'
        raise BenchError(f"{self.label}: rules expected in {self.case.rules_in}, found in {self.rules_found}")

    def time_one(self, run: int) -> None:
        """ADD and DEL of one more container, both timed."""
        cid = f"timed{run}"
        container = self.node.add_container()
        try:
            add = self.must("ADD", cid, container, HOST_PORT)
            delete = self.must("DEL", cid, container, HOST_PORT)
        finally:
            nstools.delete_netns(container.name)
            self.node.containers.remove(container)
        if run > 0:
            self.samples["ADD"].add(add)
            self.samples["DEL"].add(delete)

    def depopulate(self) -> float:
        """DEL every resident through libcni, as a runtime would; seconds taken in all."""
        total = 0.0
        for i, (cid, container) in enumerate(self.residents):
            total += self.must("DEL", cid, container, RESIDENT_PORTS + i)["seconds"]
        self.residents.clear()
        return total

    def namespaces(self) -> set[str]:
        return {self.node.name, *(c.name for c in self.node.containers)}

    def helper(self) -> HelperSeen:
        """The warm helper of this network's node (none for a cold case): its memory, and the
        requests it served (its lock file counts them)."""
        target = os.stat(nstools.netns_path(name=self.node.name)).st_ino
        processes = {pid for pid in warm.helper_processes() if warm.net_inode(pid) == target}
        seen = HelperSeen(served=warm.served_requests(self.state_dir))
        for pid in processes:
            if parent_pid(pid) in processes:
                continue  # a request child
            status = Path(f"/proc/{pid}/status").read_text()
            fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
            seen.rss_kib.append((int(fields["VmRSS"]), int(fields["VmHWM"])))
        return seen

    def close(self) -> None:
        """Stop the client and remove the node, its containers and temp dirs, whatever state
        they are in: the node namespace takes every rule and link with it."""
        try:
            if self.client is not None:
                self.client.close()
        finally:
            self.node.cleanup()


@dataclass
class HelperSeen:
    served: int
    rss_kib: list[tuple[int, int]] = field(default_factory=list)  # (VmRSS, VmHWM) of each helper process


def parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def rule_places(node: Node) -> list[str]:
    """Where the node has firewall rules: iptables-nft, iptables-legacy, nftables (a table
    that is not one of the tables iptables-nft makes)."""
    places = []
    for place, tool in (("iptables-nft", "iptables-nft-save"), ("iptables-legacy", "iptables-legacy-save")):
        if any(line.startswith("-A") for line in node.sh(tool, check=False).stdout.splitlines()):
            places.append(place)
    iptables_tables = {"filter", "nat", "mangle", "raw", "security"}
    tables = [line.split() for line in node.sh("nft", "list", "tables", check=False).stdout.splitlines()]
    if any(len(t) == 3 and t[0] == "table" and t[2] not in iptables_tables for t in tables):
        places.append("nftables")
    return places


# --- the run --------------------------------------------------------------------------------

def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the clean-up in `finally` runs."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Startup:
    argv: list[str]
    env: list[str]
    stdin: str
    samples: Samples = field(default_factory=Samples)


def startups() -> dict[str, Startup]:
    version = ["CNI_COMMAND=VERSION", f"PATH={PATH}"]
    request = '{"cniVersion":"1.0.0"}'
    return {
        "cni-bridge VERSION": Startup([PLUGIN], [*version, f"CNI_BRIDGE_CACHE_DIR={os.environ['CNI_BRIDGE_CACHE_DIR']}"],
                                      request),
        f"{PYTHON} -I -S -c pass": Startup([PYTHON, "-I", "-S", "-c", "pass"], [f"PATH={PATH}"], ""),
        "reference bridge VERSION": Startup([f"{REF_DIR}/bridge"], version, request),
    }


def calibrate_spin(client: LibcniClient, target_seconds: float = 0.010) -> int:
    probe = 2_000_000
    seconds = min(client.ask(op="spin", iterations=probe)["seconds"] for _ in range(5))
    return max(1, int(probe * target_seconds / seconds))


@dataclass
class Bench:
    args: argparse.Namespace
    networks: list[Network] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # case key -> why
    startup: dict[str, Startup] = field(default_factory=startups)
    spin: Samples = field(default_factory=Samples)
    teardown: dict[str, float] = field(default_factory=dict)
    dropped: set[str] = field(default_factory=set)  # namespaces of networks closed early
    helpers: dict[str, HelperSeen] = field(default_factory=dict)  # network label -> its helper after the runs

    def set_up(self, cases: list[Case], plugin_dir: str) -> None:
        for case in cases:
            if case.unavailable:
                self.unavailable[case.key] = case.unavailable
                continue
            sizes = [(1, SUBNET_ONE)] + ([(self.args.crowd, SUBNET_CROWD)] if self.args.crowd > 1 else [])
            for residents, subnet in sizes:
                progress(f"setting up {case.label} with {residents} resident container{'s' if residents > 1 else ''}")
                network = Network(case, residents, subnet, plugin_dir, self.args.port_keys)
                self.networks.append(network)
                refusal = network.populate()
                if refusal is not None:
                    progress(f"  {refusal}")
                    self.unavailable[case.key] = refusal
                    self.drop(case.key)
                    break

    def drop(self, key: str) -> None:
        for network in [n for n in self.networks if n.case.key == key]:
            self.networks.remove(network)
            self.dropped |= network.namespaces()
            network.close()

    def run(self) -> None:
        if not self.networks:
            raise BenchError("no case can run")
        client = self.networks[0].client
        assert client is not None
        iterations = calibrate_spin(client)
        for run in range(self.args.runs + 1):
            if run % 5 == 0:
                progress(f"run {run} of {self.args.runs}")
            for network in random.sample(self.networks, len(self.networks)):
                network.time_one(run)
            for name in random.sample(list(self.startup), len(self.startup)):
                s = self.startup[name]
                answer = client.ask(op="spawn", argv=s.argv, env=s.env, stdin=s.stdin)
                if answer.get("error"):
                    raise BenchError(f"{name}: {answer['error']}")
                if run > 0:
                    s.samples.add(answer)
            if run > 0:
                self.spin.add(client.ask(op="spin", iterations=iterations))
        self.check_helpers()

    def check_helpers(self) -> None:
        """The warm cases went through their helper (every timed ADD and DEL), the cold ones never."""
        for network in self.networks:
            seen = self.helpers[network.label] = network.helper()
            if network.case.helper and (seen.served < 2 * self.args.runs or not seen.rss_kib):
                raise BenchError(f"{network.label}: the warm helper served {seen.served} requests, "
                                 f"not every timed one ({2 * self.args.runs})")
            if not network.case.helper and (seen.served or seen.rss_kib):
                raise BenchError(f"{network.label}: a cold case used a warm helper ({seen.served} requests)")

    def tear_down(self) -> None:
        for network in self.networks:
            if network.resident_count > 1:
                progress(f"DEL of the {len(network.residents)} residents of {network.case.label}")
            self.teardown[network.label] = network.depopulate()

    def close(self) -> set[str]:
        """Close every network; the names of the namespaces that were theirs."""
        names: set[str] = set()
        while self.networks:
            network = self.networks.pop()
            names |= network.namespaces()
            network.close()
        return names | self.dropped


# --- the report ------------------------------------------------------------------------------

def ms(values: Sequence[float]) -> str:
    return f"{min(values) * 1000:7.1f} {statistics.median(values) * 1000:7.1f} {max(values) * 1000:7.1f}"


def ms_inline(values: Sequence[float]) -> str:
    return " / ".join(f"{v * 1000:.1f}" for v in (min(values), statistics.median(values), max(values)))


def mib(values: Sequence[int]) -> str:
    return f"{statistics.median(values) / 1024:.1f} ({max(values) / 1024:.1f})"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}" if a is not None and b else "     -"


def report(bench: Bench, cases: list[Case], load_before: tuple[float, float, float]) -> None:
    args = bench.args
    by_key = {(n.case.key, n.resident_count): n for n in bench.networks}

    def median(key: str, residents: int, op: str) -> float | None:
        network = by_key.get((key, residents))
        return statistics.median(network.samples[op].seconds) if network else None

    print(f"\ncni-bridge through libcni: {args.runs} interleaved runs (+1 warm-up), "
          f"times in ms as min / median / max; plugin {os.path.realpath(PLUGIN)}")
    print(f"libcni {package_version('golang-github-appc-cni-dev')} (Debian) in bench/libcni, "
          f"reference plugins {package_version('containernetworking-plugins')} (Debian), "
          f"port mappings with {args.port_keys} keys")
    header = (f"{'':38s} {'rules in':16s} {'ADD min  median     max':>23s}  {'DEL min  median     max':>23s}"
              f"  {'ADD x':>6s} {'DEL x':>6s}")
    crowd_sizes = [1] + ([args.crowd] if args.crowd > 1 else [])
    for residents in crowd_sizes:
        base = "the reference (iptables), same size" if residents == 1 else "the same case with 1 resident"
        print(f"\n{residents} container{'s' if residents > 1 else ''} already on the network; "
              f"x = ratio of medians to {base}")
        print(header)
        for case in cases:
            network = by_key.get((case.key, residents))
            if network is None:
                print(f"  {case.label:36s} {bench.unavailable.get(case.key, 'not run')}")
                continue
            ref_add = median("ref", 1, "ADD") if residents == 1 else median(case.key, 1, "ADD")
            ref_del = median("ref", 1, "DEL") if residents == 1 else median(case.key, 1, "DEL")
            add, delete = network.samples["ADD"].seconds, network.samples["DEL"].seconds
            print(f"  {case.label:36s} {network.rules_found:16s} {ms(add)}  {ms(delete)}  "
                  f"{ratio(statistics.median(add), ref_add)} {ratio(statistics.median(delete), ref_del)}")
        if residents > 1:
            print(f"  against the reference (iptables) with {residents} residents:")
            for case in cases:
                if case.key != "ref" and (case.key, residents) in by_key:
                    print(f"    {case.label:34s} ADD x {ratio(median(case.key, residents, 'ADD'), median('ref', residents, 'ADD'))}"
                          f"   DEL x {ratio(median(case.key, residents, 'DEL'), median('ref', residents, 'DEL'))}")

    print("\npeak RSS of the plugin processes in MiB, median (max) over the timed runs: ru_maxrss that wait4")
    print("returns to the libcni client for each plugin it started (the plugin, or a child it waited for if larger)")
    for network in bench.networks:
        per_op = "   ".join(f"{op} " + ", ".join(f"{plugin} {mib(v)}" for plugin, v in network.samples[op].rss_kib.items())
                           for op in ("ADD", "DEL"))
        print(f"  {network.label:50s} {per_op}")

    print("\nwarm helpers after the timed runs: requests served (from the helper's lock file), "
          "VmRSS and peak VmHWM in MiB")
    for network in bench.networks:
        seen = bench.helpers.get(network.label)
        if network.case.helper and seen is not None:
            memory = ", ".join(f"{rss / 1024:.1f} (peak {hwm / 1024:.1f})" for rss, hwm in seen.rss_kib)
            print(f"  {network.label:50s} served {seen.served:5d}   {memory}")

    print("\nstart-up, spawned by the libcni client as it spawns a plugin: ms min / median / max, peak RSS MiB")
    for name, s in bench.startup.items():
        print(f"  {name:48s} {ms(s.samples.seconds)}   {mib(next(iter(s.samples.rss_kib.values())))}")

    if any(n.resident_count > 1 for n in bench.networks):
        print("\nuntimed set-up and teardown of the residents, seconds in all (ADD: first 10 / last 10 median ms)")
        for network in bench.networks:
            if network.resident_count > 1:
                first = statistics.median(network.setup_seconds[:10]) * 1000
                last = statistics.median(network.setup_seconds[-10:]) * 1000
                print(f"  {network.label:50s} ADD {sum(network.setup_seconds):6.1f} s ({first:.0f} / {last:.0f} ms)"
                      f"   DEL {bench.teardown.get(network.label, float('nan')):6.1f} s")

    spin = bench.spin.seconds
    spread = (max(spin) - min(spin)) / statistics.median(spin) * 100
    load_after = os.getloadavg()
    print(f"\nmachine noise: {os.cpu_count()} CPUs; the same fixed CPU work in the client between runs took "
          f"{ms_inline(spin)} ms (max - min = {spread:.0f}% of the median);")
    print(f"load average (1, 5, 15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {' '.join(f'{x:.2f}' for x in load_after)}")


def package_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                          capture_output=True, text=True).stdout or "(not installed)"


# --- main ------------------------------------------------------------------------------------

def prerequisites() -> None:
    if not nstools.have_privileges():
        raise SystemExit("bench: run as root (it creates network namespaces)")
    for path, hint in ((PLUGIN, "./build.sh builds it"), (CLIENT, "./build.sh bench builds it"),
                       (f"{REF_DIR}/bridge", "install containernetworking-plugins")):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"bench: {path} is missing ({hint})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs (default 30)")
    parser.add_argument("--crowd", type=int, default=300,
                        help="residents of the crowded networks (default 300; 0 leaves them out)")
    parser.add_argument("--cases", default="",
                        help="comma-separated case keys (nft, legacy, nftables, warm-nft, warm-nftables, ref, "
                             "ref-nftables); default all")
    parser.add_argument("--port-keys", choices=("lowercase", "containerd"), default="lowercase",
                        help="portMappings keys as cnitool, CRI-O and podman send them, or capitalised as containerd")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # The single file extracts its bundle on first start: into the run's own cache, never the
    # host's (libcni hands its environment on to the plugins). The warm-up run extracts.
    plugin_dir = tempfile.mkdtemp(prefix="cbt-bench-bin-")
    os.environ["CNI_BRIDGE_CACHE_DIR"] = f"{plugin_dir}/cache"
    prerequisites()
    cases = all_cases()
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.key for c in cases}
        if unknown:
            raise SystemExit(f"bench: unknown case(s) {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.key in wanted]
    host_before = _host_snapshot()
    load_before = os.getloadavg()
    bench = Bench(args)
    # libcni finds a plugin by its type in the plugin path: a directory with cni-bridge in it.
    interrupted = ""
    try:
        with interrupts_as_keyboard_interrupt():
            os.symlink(os.path.abspath(PLUGIN), f"{plugin_dir}/cni-bridge")
            bench.set_up(cases, plugin_dir)
            bench.run()
            bench.tear_down()
            report(bench, cases, load_before)
    except BenchError as e:
        raise SystemExit(f"bench: {e}") from None
    except KeyboardInterrupt as e:
        interrupted = str(e) or "SIGINT"
    finally:
        # A second Ctrl-C must not cut the clean-up short (the process ends right after it).
        stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        namespaces = bench.close()
        shutil.rmtree(plugin_dir, ignore_errors=True)
        check_host(host_before, namespaces)
    if interrupted:
        progress(f"bench: interrupted ({interrupted}); everything it set up is removed")
        raise SystemExit(130)


def check_host(before: dict[str, str], namespaces: set[str]) -> None:
    """Everything ran in throwaway namespaces; say so if the host changed all the same.
    `ip netns` is compared for our own namespaces only: other people's test runs add and
    remove theirs meanwhile."""
    after = _host_snapshot()
    changed = [key for key in before if key != "ip netns" and before[key] != after.get(key)]
    left = sorted(namespaces & set(os.listdir(nstools.NETNS_DIR)))
    if left:
        changed.append(f"namespaces left: {' '.join(left)}")
    if changed:
        progress(f"bench: WARNING: the host changed during the run: {'; '.join(changed)} (the bench writes only "
                 "to its temp dirs and namespaces; other test runs on this machine may have made the change)")
    else:
        progress(f"host: unchanged (links, iptables of both flavours, /run/cni-bridge, CNI directories; "
                 f"all {len(namespaces)} namespaces of the run removed)")


if __name__ == "__main__":
    main()
