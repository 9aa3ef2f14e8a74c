"""Runs the corpus (tests/go_compat_corpus.py) in node namespaces, for test_go_compat.py and
test_del_completes.py, which share one run (``corpus_outcomes``).

Each node gets one driver process, ``ip netns exec <node> python -m tests.go_compat_driver``:
the driver and every plugin it starts live in the node's network namespace, and in a mount
namespace of their own (``ip netns exec`` makes one) where a tmpfs hides ``/var/lib/cni``. A
config whose ``dataDir`` a plugin fails to read (a key spelt ``DataDir``, say) then writes its
reservations into that tmpfs and never into the real host's store.

Per case, one after the other (snapshots of the node need a quiet node, and cases that fall
back to a default bridge name, ``cni0`` or ``cnibr0``, would share it):

- the reference chain: ``bridge``, then ``portmap`` with the bridge's result as prevResult;
  for an accepted ADD, what it built is observed (addresses, routes, MTU, MAC, the bridge,
  DNAT and masquerade rules); then DEL of both, whatever happened;
- cni-bridge, in another container namespace: ADD; if accepted, the same observation, then
  DEL; if rejected, a snapshot of the node (links, iptables of both families, the stateDir
  and dataDir contents) before and after a DEL with the same config and environment.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

REF_DIR = "/usr/lib/cni"
REF_BRIDGE = os.path.join(REF_DIR, "bridge")
REF_PORTMAP = os.path.join(REF_DIR, "portmap")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_BRIDGES = ("cni0", "cnibr0")  # the reference's and cni-bridge's default bridge names
OUTPUT_LIMIT = 20000  # a result is well below; an error's stderr may be a Go stack trace


# --- names and rendering ------------------------------------------------------------------------


def role_names(role: str) -> dict[str, str]:
    """Fresh names for one side of one case: ``r`` (reference) or ``c`` (cni-bridge)."""
    return {
        "@NET@": f"cbt{role}-{secrets.token_hex(4)}",
        "@BR@": f"cbt{role}{secrets.token_hex(4)}",
        "@BR2@": f"cbt{role}{secrets.token_hex(4)}",
    }


def render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(key, value)
    return template


def with_keys(text: str, first: dict[str, Any], last: dict[str, Any]) -> str:
    """The config object with ``first`` keys put before and ``last`` keys after its own.

    Done on the text so that a config with duplicate keys reaches the plugin as written. A key
    added last wins over the config's own spelling of it under Go's rules (last one wins).
    """
    body = text.strip()
    assert body.startswith("{") and body.endswith("}"), "corpus configs are JSON objects"
    inner = body[1:-1].strip()
    parts = [json.dumps(first)[1:-1]] if first else []
    if inner:
        parts.append(inner)
    if last:
        parts.append(json.dumps(last)[1:-1])
    return "{" + ", ".join(parts) + "}"


# --- running things ---------------------------------------------------------------------------


def run_plugin(executable: str, command: str, stdin: str, env: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    proc = subprocess.run([executable], input=stdin.encode(), env={**env, "CNI_COMMAND": command},
                          capture_output=True, timeout=60, check=False)
    return {
        "rc": proc.returncode,
        "stdout": proc.stdout.decode(errors="replace")[:OUTPUT_LIMIT],
        "stderr": proc.stderr.decode(errors="replace")[-OUTPUT_LIMIT:],
        "seconds": round(time.monotonic() - started, 4),
    }


def plugin_env(container_id: str, netns: str, cni_args: str | None) -> dict[str, str]:
    env = {"PATH": PATH, "CNI_CONTAINERID": container_id, "CNI_NETNS": f"/run/netns/{netns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": REF_DIR}
    if cni_args is not None:
        env["CNI_ARGS"] = cni_args
    return env


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30).stdout


def json_stream(text: str) -> Iterator[Any]:
    """Every JSON document of ``ip -j -batch`` output, which prints one per command."""
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return
        try:
            document, position = decoder.raw_decode(text, position)
        except ValueError:
            return
        yield document


def delete_bridges(aliases: dict[str, str]) -> None:
    """Remove the bridges one side of a case may have made, default-named ones included, so
    that the next case starts from a clean node (a bridge that is absent is fine)."""
    names = [*aliases, *DEFAULT_BRIDGES]
    sh("ip", "-force", "-batch", "-", stdin="".join(f"link del {name}\n" for name in names))


# --- observing an attachment ----------------------------------------------------------------------


def _global_addrs(link: dict[str, Any]) -> list[str]:
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") == "global")


def observe_container(netns: str) -> dict[str, Any]:
    out = sh("ip", "-n", netns, "-j", "-d", "-force", "-batch", "-", stdin="addr show dev eth0\nroute show table all\n")
    links: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for document in json_stream(out):
        for item in document if isinstance(document, list) else []:
            (links if "ifname" in item else routes).append(item)
    if not links:
        return {"eth0": None}
    eth0 = links[0]
    main_routes = sorted(
        f"{r.get('dst')} via {r.get('gateway', '-')}" for r in routes
        if r.get("table", "main") == "main" and r.get("protocol") != "kernel" and r.get("type", "unicast") == "unicast"
    )
    return {
        "eth0": {"addrs": _global_addrs(eth0), "mtu": eth0.get("mtu"), "mac": str(eth0.get("address", "")).lower(),
                 "peer_index": eth0.get("link_index")},
        "routes": main_routes,
    }


def observe_bridge(peer_index: int | None, aliases: dict[str, str]) -> dict[str, Any]:
    """The bridge the container's host veth is attached to, found through the veth itself."""
    links: list[dict[str, Any]] = next(json_stream(sh("ip", "-j", "-d", "addr", "show")), [])
    by_index = {link.get("ifindex"): link for link in links}
    by_name = {link.get("ifname"): link for link in links}
    port = by_index.get(peer_index)
    if port is None:
        return {"bridge": None}
    bridge = by_name.get(port.get("master"))
    slave = (port.get("linkinfo") or {}).get("info_slave_data") or {}
    name = str(port.get("master"))
    return {
        "bridge": aliases.get(name, "(default)" if name in DEFAULT_BRIDGES else name),
        "bridge_addrs": _global_addrs(bridge) if bridge else [],
        "promisc": bool(bridge and (bridge.get("promiscuity", 0) > 0 or "PROMISC" in bridge.get("flags", []))),
        "hairpin": bool(slave.get("hairpin")),
    }


_DPORT = re.compile(r"--dport (\d+)")
_PROTO = re.compile(r"-p (\S+)")
_DEST = re.compile(r"-d (\S+)")
_TO = re.compile(r"--to-destination (\S+)")
_SOURCE = re.compile(r"-s (\S+?)(?:/(?:32|128))? ")


def _plain(address: str) -> str:
    return address.split("/")[0].strip("[]")


def observe_nat(container_ips: Sequence[str]) -> dict[str, Any]:
    """DNAT rules to this container and POSTROUTING jumps for its source address.

    A DNAT rule becomes ``proto hostPort [hostIP] -> ip:port`` whatever chain it is in, so the
    reference's CNI-DN-* rules and cni-bridge's CNIBR-DNAT-* rules compare directly.
    """
    dnat: set[str] = set()
    masq: set[str] = set()
    wanted = set(container_ips)
    for save in ("iptables-save", "ip6tables-save"):
        for line in sh(save, "-t", "nat").splitlines():
            if not line.startswith("-A "):
                continue
            if "-j DNAT" in line:
                to = _TO.search(line)
                if to is None:
                    continue
                target = to.group(1)
                ip, _, port = target.rpartition(":")
                if _plain(ip) not in wanted:
                    continue
                proto = _PROTO.search(line)
                dport = _DPORT.search(line)
                dest = _DEST.search(line)
                dnat.add(f"{proto.group(1) if proto else '?'} {dport.group(1) if dport else '?'} "
                         f"{_plain(dest.group(1)) if dest else '*'} -> {_plain(ip)}:{port}")
            elif line.startswith("-A POSTROUTING "):
                source = _SOURCE.search(line + " ")
                if source and _plain(source.group(1)) in wanted:
                    masq.add(_plain(source.group(1)))
    return {"dnat": sorted(dnat), "masq": sorted(masq)}


def observe(netns: str, aliases: dict[str, str], nat: bool) -> dict[str, Any]:
    seen = observe_container(netns)
    eth0 = seen.get("eth0")
    if eth0 is None:
        return seen
    seen.update(observe_bridge(eth0.pop("peer_index"), aliases))
    if nat:
        seen.update(observe_nat([_plain(a) for a in eth0["addrs"]]))
    return seen


def result_dns(stdout: str) -> dict[str, Any]:
    """The result's DNS, empty fields dropped (``{}`` and a missing key mean the same)."""
    try:
        result = json.loads(stdout)
    except ValueError:
        return {}
    dns = result.get("dns") if isinstance(result, dict) else None
    return {k: v for k, v in dns.items() if v} if isinstance(dns, dict) else {}


# --- snapshots for DEL -----------------------------------------------------------------------------


_STATE = re.compile(r" state \S+")


def tree(path: str) -> dict[str, str]:
    """Every file and directory under ``path`` with a digest of its content."""
    listing: dict[str, str] = {}
    for top, dirs, files in os.walk(path):
        for name in dirs:
            listing[os.path.relpath(os.path.join(top, name), path) + "/"] = "dir"
        for name in files:
            full = os.path.join(top, name)
            try:
                with open(full, "rb") as handle:
                    listing[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()[:16]
            except OSError as exc:
                listing[os.path.relpath(full, path)] = f"unreadable: {exc}"
    return listing


BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


def ruleset(save_output: str) -> list[str]:
    """Rules and user chains of an ``iptables-save``, each prefixed with its table.

    Tables and built-in chains with policy ACCEPT and no rules are left out: the kernel makes
    them on first use (iptables-save itself makes nf_tables' appear), and they mean nothing.
    """
    table = ""
    lines = []
    for line in save_output.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            lines.append(f"{table} {line}")
        elif line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if chain not in BUILTIN_CHAINS or policy != "ACCEPT":
                lines.append(f"{table} :{chain} {policy}")
    return lines


def node_snapshot(state_dir: str, data_dir: str) -> dict[str, Any]:
    def rules(save: str) -> list[str]:
        return ruleset(sh(save))

    return {
        # "state UP/DOWN" follows carrier, which the kernel updates on its own time.
        "links": sorted(_STATE.sub("", line.split("\\")[0].split(": ", 1)[1])
                        for line in sh("ip", "-o", "link", "show").splitlines() if ": " in line),
        "iptables": rules("iptables-save"),
        "ip6tables": rules("ip6tables-save"),
        "stateDir": tree(state_dir),
        "dataDir": tree(data_dir),
    }


def snapshot_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changes = []
    for key in before:
        old, new = before[key], after[key]
        if old == new:
            continue
        if isinstance(old, dict):
            gone = sorted(set(old) - set(new))
            added = sorted(set(new) - set(old))
            edited = sorted(k for k in set(old) & set(new) if old[k] != new[k])
            changes.append(f"{key}: removed {gone} added {added} changed {edited}")
        else:
            changes.append(f"{key}: removed {sorted(set(old) - set(new))} added {sorted(set(new) - set(old))}")
    return changes


# --- one case ------------------------------------------------------------------------------------


class Job:
    def __init__(self, spec: dict[str, Any], work_dir: str, executable: str) -> None:
        self.id: str = spec["id"]
        self.template: str = spec["template"]
        self.cni_args: str | None = spec.get("cni_args")
        self.netns_ref: str = spec["netns_ref"]
        self.netns_cb: str = spec["netns_cb"]
        self.nat: bool = bool(spec.get("nat"))
        self.executable = executable
        self.dir = os.path.join(work_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", self.id))
        os.makedirs(self.dir)

    def side(self, role: str, netns: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """Rendered config text, environment and name aliases of one side of the case."""
        names = role_names(role)
        data_dir = os.path.join(self.dir, f"data-{role}")
        values = {**names, "@DATA@": data_dir, "@NETNS@": f"/run/netns/{netns}"}
        aliases = {names["@BR@"]: "@BR@", names["@BR2@"]: "@BR2@"}
        env = plugin_env(f"cbt{role}{secrets.token_hex(8)}", netns, self.cni_args)
        return render(self.template, values), env, aliases


def reference_side(job: Job) -> dict[str, Any]:
    text, env, aliases = job.side("r", job.netns_ref)
    bridge_conf = with_keys(text, {"type": "bridge"}, {})
    side: dict[str, Any] = {"names": sorted(aliases), "bridge_add": run_plugin(REF_BRIDGE, "ADD", bridge_conf, env)}
    prev: Any = None
    if side["bridge_add"]["rc"] == 0:
        try:
            prev = json.loads(side["bridge_add"]["stdout"])
        except ValueError:
            prev = None
    portmap_last: dict[str, Any] = {"capabilities": {"portMappings": True}}
    if prev is not None:
        portmap_last["prevResult"] = prev
        side["portmap_add"] = run_plugin(REF_PORTMAP, "ADD", with_keys(text, {"type": "portmap"}, portmap_last), env)
    side["accepted"] = side["bridge_add"]["rc"] == 0 and side.get("portmap_add", {}).get("rc") == 0
    if side["accepted"]:
        side["seen"] = observe(job.netns_ref, aliases, job.nat)
        side["seen"]["dns"] = result_dns(side["portmap_add"]["stdout"])
    # A runtime DELs the whole list after any ADD, failed or not, last plugin first.
    side["portmap_del"] = run_plugin(REF_PORTMAP, "DEL", with_keys(text, {"type": "portmap"}, portmap_last), env)
    side["bridge_del"] = run_plugin(REF_BRIDGE, "DEL", bridge_conf, env)
    delete_bridges(aliases)
    return side


def cni_bridge_conf(job: Job, text: str) -> str:
    return with_keys(text, {"type": "cni-bridge"}, {"stateDir": os.path.join(job.dir, "state")})


def cni_bridge_side(job: Job) -> dict[str, Any]:
    """ADD, then DEL with the same config and environment, as a runtime does.

    After an accepted ADD, what it built is observed first. After a rejected one, the node is
    snapshot before and after the DEL: that DEL has nothing to remove and must change nothing.
    """
    text, env, aliases = job.side("c", job.netns_cb)
    conf = cni_bridge_conf(job, text)
    side: dict[str, Any] = {"names": sorted(aliases), "add": run_plugin(job.executable, "ADD", conf, env)}
    side["accepted"] = side["add"]["rc"] == 0
    if side["accepted"]:
        side["seen"] = observe(job.netns_cb, aliases, job.nat)
        side["seen"]["dns"] = result_dns(side["add"]["stdout"])
        side["del"] = run_plugin(job.executable, "DEL", conf, env)
    else:
        state_dir, data_dir = os.path.join(job.dir, "state"), os.path.join(job.dir, "data-c")
        before = node_snapshot(state_dir, data_dir)
        side["del"] = run_plugin(job.executable, "DEL", conf, env)
        side["del_changes"] = snapshot_changes(before, node_snapshot(state_dir, data_dir))
    delete_bridges(aliases)
    return side


def run_job(job: Job) -> dict[str, Any]:
    return {"id": job.id, "ref": reference_side(job), "cb": cni_bridge_side(job)}


def hide_host_cni_store() -> None:
    """A tmpfs over /var/lib in this mount namespace, so a case without a dataDir of its own
    writes the default store there, never on the host. Over /var/lib, not /var/lib/cni: another
    test removing the host's /var/lib/cni (podman's cache) would detach a mount on it in every
    namespace, and the plugins would then write the host's /var/lib/cni after all."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "cbt-go-compat", "/var/lib"],
                   check=True, capture_output=True)


def main() -> int:
    request = json.load(sys.stdin)
    if os.environ.get("CBT_GO_COMPAT_IN_NODE") != "1":
        raise SystemExit("run me through run_in_nodes(): I must be inside a node namespace")
    hide_host_cni_store()
    answers = []
    for spec in request["jobs"]:
        started = time.monotonic()
        job = Job(spec, request["work_dir"], request["executable"])
        answer = run_job(job)
        answer["seconds"] = round(time.monotonic() - started, 4)
        answers.append(answer)
    json.dump(answers, sys.stdout)
    return 0


# --- the launcher, used by the tests ------------------------------------------------------------------


def add_containers(node: Any, count: int) -> list[str]:
    """``count`` container namespaces on ``node``, made by one ``ip -batch``; the node's cleanup
    (or ``delete_containers``) removes them."""
    from tests import nstools
    from tests.plugin import Container

    names = [nstools.unique_name() for _ in range(count)]
    node.containers.extend(Container(name) for name in names)
    subprocess.run(["ip", "-batch", "-"], input="".join(f"netns add {name}\n" for name in names),
                   text=True, capture_output=True, check=True)
    return names


def delete_containers(node: Any) -> None:
    """All container namespaces of ``node`` in one ``ip -batch`` (the node's cleanup then finds none)."""
    names = [container.name for container in node.containers]
    subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns delete {name}\n" for name in names),
                   text=True, capture_output=True, check=False)


def run_in_nodes(jobs: Sequence[dict[str, Any]], nodes: Sequence[Any], executable: str) -> list[dict[str, Any]]:
    """Split ``jobs`` over the nodes (tests.plugin.Node) and run one driver per node at once.

    Each job needs ``id``, ``template`` (the config text with placeholders), optionally
    ``cni_args`` and ``nat``; its container namespaces are made here, on the job's node, so
    that the node's cleanup removes them.
    """
    from concurrent.futures import ThreadPoolExecutor

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "CBT_GO_COMPAT_IN_NODE": "1"}

    def drive(index: int) -> subprocess.CompletedProcess[str]:
        node = nodes[index]
        share = [dict(job) for job in jobs[index::len(nodes)]]
        names = iter(add_containers(node, 2 * len(share)))
        for job in share:
            job["netns_ref"], job["netns_cb"] = next(names), next(names)
        request = {"jobs": share, "work_dir": node.temp_dir(), "executable": executable}
        try:
            return subprocess.run(["ip", "netns", "exec", node.name, sys.executable, "-m", "tests.go_compat_driver"],
                                   input=json.dumps(request), capture_output=True, text=True, cwd=repo, env=env,
                                   timeout=900, check=False)
        finally:
            delete_containers(node)

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        done = list(pool.map(drive, range(len(nodes))))
    failures = [f"driver exited {proc.returncode}: {proc.stderr[-3000:]}" for proc in done if proc.returncode != 0]
    assert not failures, "\n".join(failures)
    return [answer for proc in done for answer in json.loads(proc.stdout)]


def corpus_outcomes(executable: str, case_ids: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
    """The corpus cases (all, or those named) run once per test session, answers by case id."""
    return _run_corpus(executable, case_ids, 4)


@functools.cache
def _run_corpus(executable: str, case_ids: tuple[str, ...] | None, workers: int) -> dict[str, dict[str, Any]]:
    """The nodes (and with them every container namespace and temp dir) are gone when this
    returns; a link made by the run that shows up in the root namespace fails it."""
    from tests.go_compat_corpus import CASES
    from tests.plugin import Node

    cases = [case for case in CASES if case_ids is None or case.id in case_ids]
    workers = max(1, min(workers, len(cases)))

    nodes: list[Any] = []
    try:
        for _ in range(workers):
            nodes.append(Node())
        jobs = [{"id": case.id, "template": case.text, "cni_args": case.cni_args, "nat": case.touches_nat}
                for case in cases]
        started = time.monotonic()
        answers = run_in_nodes(jobs, nodes, executable)
        elapsed = time.monotonic() - started
    finally:
        for node in nodes:
            node.cleanup()
    made = {name for answer in answers for side in ("ref", "cb") for name in answer[side]["names"]}
    leaked = made & root_link_names()
    assert not leaked, f"links leaked into the root network namespace: {sorted(leaked)}"
    sys.stderr.write(f"\ngo-compat corpus: {len(answers)} cases in {elapsed:.1f} s on {workers} nodes\n")
    return {answer["id"]: answer for answer in answers}


def root_link_names() -> set[str]:
    out = sh("ip", "-o", "link", "show")
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


if __name__ == "__main__":
    sys.exit(main())
