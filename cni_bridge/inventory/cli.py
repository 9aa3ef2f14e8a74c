"""``cni-bridge list [--json] [--state-dir DIR] [--data-dir DIR] [--no-trunc] [NETWORK...]``."""

from __future__ import annotations

import json
import sys

from .. import PLUGIN_NAME
from ..command_line import UsageError, asks_for_help, usage_failure

DEFAULT_STATE_DIR = "/run/cni-bridge"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"

HELP = f"""\
usage: {PLUGIN_NAME} list [--json] [--state-dir DIR] [--data-dir DIR] [--no-trunc] [NETWORK...]

Show every attachment on this host (of the NETWORKs given, else of all): one line each with
its network, container ID, interface name, addresses, published ports, bridge, and whether its
host veth and its firewall rules are intact. Built from the firewall records in the state
directory and the reservations in the host-local store; attachments found in only one of them
are listed too. Read-only: it takes no lock and changes nothing, so it can run at any time.
Run it in the network namespace the plugin runs in (the host's).

columns
  ADDRESSES  the reserved addresses (host-local store; "-" with another IPAM or none left)
  PORTS      published host ports: 8080/tcp on every address, or HOSTIP:PORT/PROTO
  VETH       the host end, named from the attachment (veth + 11 hex digits):
             ok, missing (no such link), detached (not a bridge port), down,
             unknown (links not listable, or a legacy reservation without an ifname)
  RULES      ok; "N missing: <the first>" (rules or nftables elements of this attachment, or
             shared ones it relies on); "-" when there is no firewall record (no rules were
             needed, or only the store knows the attachment); unknown (rules not listable)

options
  --json            the same as one JSON document on one line (its shape: README, Troubleshooting)
  --state-dir DIR   the firewall state directory (the config's stateDir; default {DEFAULT_STATE_DIR})
  --data-dir DIR    the host-local store (the config's ipam.dataDir; default {DEFAULT_DATA_DIR})
  --no-trunc        full container IDs (the table shows the first 12 characters)

exit status: 0 (also when something is broken: see VETH, RULES, or "intact" in the JSON),
2 for a usage error.
"""



def _parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {"state-dir": DEFAULT_STATE_DIR, "data-dir": DEFAULT_DATA_DIR}
    networks: list[str] = []
    rest = iter(argv)
    for arg in rest:
        name, has_value, value = arg[2:].partition("=") if arg.startswith("--") else (arg, False, "")
        if name in ("state-dir", "data-dir"):
            if not has_value:
                value = next(rest, "")
            if not value:
                raise UsageError(f"--{name} needs a directory")
            options[name] = value
        elif arg in ("--json", "--no-trunc"):
            options[arg[2:]] = "yes"
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}")
        else:
            networks.append(arg)
    return options, networks


def run(argv: list[str]) -> int:
    if asks_for_help(argv, HELP):
        return 0
    try:
        options, networks = _parse(argv)
    except UsageError as error:
        return usage_failure("list", error)
    from .collect import collect
    from .render import document, table
    warnings: list[str] = []
    state_dir, data_dir = options["state-dir"], options["data-dir"]
    entries = collect(state_dir, data_dir, networks, warnings)
    if "json" in options:
        # One line: with an indent, json's encoder falls back to pure Python, 0.15 s for 1000 attachments.
        text = json.dumps(document(entries, state_dir, data_dir, warnings)) + "\n"
    elif entries:
        text = table(entries, full_ids="no-trunc" in options)
    else:
        text = f"no attachments (firewall records in {state_dir}, reservations in {data_dir})\n"
    for warning in warnings if "json" not in options else ():
        sys.stderr.write(f"{PLUGIN_NAME} list: warning: {warning}\n")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # `cni-bridge list | head`: the reader has what it wanted
    return 0
