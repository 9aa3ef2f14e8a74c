"""``cni-bridge restore``: put back the firewall of every recorded attachment after a firewall
reload (firewall/restore.py does the work; this reads the arguments and reports)."""

from __future__ import annotations

import os
import sys

from . import PLUGIN_NAME
from .command_line import UsageError, asks_for_help, usage_failure
from .config.model import DEFAULT_STATE_DIR
from .errors import CniError


HELP = f"""\
usage: {PLUGIN_NAME} restore [--state-dir DIR]... [-q]

Put back what a firewall reload or flush took of the firewall of every attachment recorded in
the firewall state directory (and of the shared rules they use): published ports, masquerade,
forward accepts, the nftables table, accepts in an iptables FORWARD chain whose policy drops.
Each attachment is restored with the firewall driver that installed it, every item where it
stood before; what is still there is left alone and never repeated, so a second run changes
nothing. Run it after every reload (see the README: Firewall reloads and restore).

options
  --state-dir DIR  a firewall state directory (the networks' "stateDir"; default
                   {DEFAULT_STATE_DIR}); repeat it for several. A missing directory holds nothing.
  -q, --quiet      print only what could not be restored.

environment
  CNI_BRIDGE_IPTABLES  nft or legacy: the iptables flavour (default: the host's iptables-restore).

exit status: 0 when everything recorded is in place; 1 when something could not be restored
(listed on stderr, per attachment or shared resource, with the reason); 2 for a usage error.
"""



def _parse(argv: list[str]) -> tuple[list[str], bool]:
    dirs: list[str] = []
    quiet = False
    rest = iter(argv)
    for arg in rest:
        if arg == "--state-dir":
            value = next(rest, None)
            if not value:
                raise UsageError("--state-dir needs a directory")
            dirs.append(value)
        elif arg.startswith("--state-dir="):
            dirs.append(arg.partition("=")[2])
        elif arg in ("-q", "--quiet"):
            quiet = True
        else:
            raise UsageError(f"unknown argument {arg!r}")
    return list(dict.fromkeys(dirs or [DEFAULT_STATE_DIR])), quiet


def run(argv: list[str], environ: dict[str, str]) -> int:
    if asks_for_help(argv, HELP):
        return 0
    try:
        dirs, quiet = _parse(argv)
    except UsageError as error:
        return usage_failure("restore", error)
    from .firewall import driver_named
    from .firewall.restore import restore, summary
    failed = False
    for state_dir in dirs:
        if not os.path.isdir(state_dir):
            if not quiet:
                sys.stdout.write(f"{state_dir}: no firewall state directory, nothing to restore\n")
            continue
        try:
            reports, problems = restore(state_dir, driver_named)
        except CniError as error:
            reports, problems = [], [str(error)]
        out, errors = summary(state_dir, reports, problems)
        if not quiet:
            sys.stdout.write("".join(line + "\n" for line in out))
        if errors:
            failed = True
            sys.stderr.write(f"{PLUGIN_NAME} restore: {state_dir}: could not restore:\n")
            # A kernel's message may take several lines: indented under its attachment.
            sys.stderr.write("".join("  " + "\n      ".join(error.splitlines()) + "\n" for error in errors))
    return 1 if failed else 0
