"""Everything a plugin run can leave on a test node, to compare byte for byte before and after.

``take`` reads a node namespace (and its containers' namespaces) and directories:

- links (``ip -d link``, bridge timers aside: they tick), addresses, routes of every table,
  of the node and of each container;
- the firewall: ``iptables-save`` and ``ip6tables-save`` (chain counters zeroed) and the
  stateless ``nft list ruleset``;
- the network sysctls of the node (``/proc/sys/net/ipv4``, ``.../ipv6/conf``) and of each container;
- every file and directory below the given directories: path, type, mode and content.

``changes`` lists what differs between two snapshots, readably.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Sequence
from typing import Any

_SECTION = "### "
_COUNTERS = re.compile(r"\[\d+:\d+\]")
_SYSCTLS = "grep -r . /proc/sys/net/ipv4 /proc/sys/net/ipv6/conf 2>/dev/null | grep -v -e /neigh/ -e /route/"
_IP_JSON = {"links": "link show", "addresses": "address show",
            "routes4": "-4 route show table all", "routes6": "-6 route show table all"}


def _script(containers: Sequence[str]) -> str:
    """One shell in the node reads everything: a snapshot is taken hundreds of times by the
    crash tests, and every `ip netns exec` costs a mount namespace."""
    lines = [f"echo '{_SECTION}node iptables-save'; iptables-save",
             f"echo '{_SECTION}node ip6tables-save'; ip6tables-save",
             f"echo '{_SECTION}node nft list ruleset'; nft -s list ruleset",
             f"echo '{_SECTION}node sysctl'; {_SYSCTLS}"]
    for name, args in _IP_JSON.items():
        lines.append(f"echo '{_SECTION}node {name}'; ip -j -d {args}")
    for index, ns in enumerate(containers):
        for name, args in _IP_JSON.items():
            lines.append(f"echo '{_SECTION}container{index} {name}'; ip -n {ns} -j -d {args}")
        lines.append(f"echo '{_SECTION}container{index} sysctl'; ip netns exec {ns} sh -c '{_SYSCTLS}'")
    return "\n".join(lines)


# Carrier follows a bridge's ports, and the kernel updates it (and the routes' "linkdown") on
# its own time after the last port left; timers count time. None of them is state a plugin keeps.
_CARRIER_FLAGS = ("NO-CARRIER", "LOWER_UP", "linkdown")


def _steady(value: Any) -> Any:
    """ip's JSON without what changes by itself: carrier and the bridge's timers."""
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k != "operstate" and not k.endswith("_timer")}
    if isinstance(value, list):
        return [_steady(v) for v in value if v not in _CARRIER_FLAGS]
    return value


def _normalised(name: str, text: str) -> str:
    kind = name.split(" ", 1)[1]
    if kind.startswith("routes"):
        # Route dumps come in an order of the kernel's (a route that went away and came back
        # moves): sorted.
        return "\n".join(sorted(json.dumps(_steady(r), sort_keys=True) for r in json.loads(text or "[]")))
    if kind in _IP_JSON:
        return json.dumps(_steady(json.loads(text or "[]")), indent=1, sort_keys=True)
    return "".join(_COUNTERS.sub("[0:0]", line) for line in text.splitlines(keepends=True)
                   if not line.startswith("#"))  # iptables-save's dated comments


def _sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith(_SECTION):
            name = line[len(_SECTION):].strip()
            out[name] = ""
        elif name:
            out[name] += line
    return {name: _normalised(name, text) for name, text in out.items()}


def listing(directory: str) -> dict[str, str]:
    """Every entry below directory: relative path -> type, mode and (files) content."""
    out: dict[str, str] = {}
    for top, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            info = os.lstat(path)
            mode = f"{stat.S_IMODE(info.st_mode):04o}"
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    out[os.path.relpath(path, directory)] = f"file {mode} {handle.read()!r}"
            else:
                out[os.path.relpath(path, directory)] = f"{'dir' if stat.S_ISDIR(info.st_mode) else 'other'} {mode}"
    return out


def take(node_ns: str, containers: Sequence[str], directories: Sequence[str]) -> dict[str, str]:
    done = subprocess.run(["ip", "netns", "exec", node_ns, "sh", "-c", _script(containers)], capture_output=True,
                          text=True, check=False)
    snapshot = _sections(done.stdout)
    for index, directory in enumerate(directories):
        snapshot.update({f"dir{index} {path}": entry for path, entry in listing(directory).items()})
    return snapshot


def _line_diff(old: str, new: str) -> str:
    old_lines, new_lines = old.splitlines(), new.splitlines()
    gone = [f"- {line}" for line in old_lines if line not in new_lines]
    added = [f"+ {line}" for line in new_lines if line not in old_lines]
    return "\n    ".join((gone + added)[:12]) or "(order changed)"


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line (or a few) per difference."""
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if old is None:
            out.append(f"{key}: left behind: {new}")
        elif new is None:
            out.append(f"{key}: gone (was {old})")
        elif "\n" in old or "\n" in (new or ""):
            out.append(f"{key}:\n    {_line_diff(old, new or '')}")
        else:
            out.append(f"{key}: {old} -> {new}")
    return out
