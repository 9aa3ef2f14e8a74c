"""``cni-bridge add|check|del|gc|status ...``: drive a CNI network list like cnitool, without Go."""

from __future__ import annotations

import json
import os
import sys

from .. import PLUGIN_NAME, __version__
from ..errors import CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .netconf_files import NetworkList
    from .operations import Attachment, ListRunner

DEFAULT_NETCONF_DIR = "/etc/cni/net.d"
DEFAULT_CNI_PATH = "/opt/cni/bin"
NETNS_DIR = "/run/netns"
COMMANDS = ("add", "check", "del", "gc", "status")
USAGE_ERROR = 2

HELP = f"""\
usage: {PLUGIN_NAME} add|check|del [-i IFNAME] [--container-id ID] NETNAME NETNS
       {PLUGIN_NAME} gc NETNAME
       {PLUGIN_NAME} status NETNAME
       {PLUGIN_NAME} install-cni [options]    (see {PLUGIN_NAME} install-cni --help)
       {PLUGIN_NAME} prune-bundles [CACHE_DIR] (see {PLUGIN_NAME} prune-bundles --help)
       {PLUGIN_NAME} restore [--state-dir DIR]... (see {PLUGIN_NAME} restore --help)
       {PLUGIN_NAME} list [--json] [NETWORK...] (see {PLUGIN_NAME} list --help)
       {PLUGIN_NAME} --help | --version

Without arguments, and with CNI_COMMAND in the environment, {PLUGIN_NAME} is a CNI plugin:
runtimes call it with the network config on stdin. With arguments it is a runner that does what
cnitool does: it loads the network list NETNAME, runs every plugin of the list (its own type or
any other CNI plugin), chains each ADD result into the next plugin's prevResult, and caches the
final result so that check and del can hand it to the plugins later.

commands
  add      attach NETNS to NETNAME: ADD through every plugin in list order; prints the result.
           Refused if the attachment is already cached (in this boot: an entry of an earlier
           boot is deleted first, as gc would). If a plugin fails, the plugins are
           called with DEL (in reverse order) so nothing stays half attached.
  check    CHECK every plugin against the cached result (cniVersion 0.4.0 or later).
  del      DEL through every plugin in reverse order with the cached result; drops the cache.
           check and del use the CNI_ARGS and CAP_ARGS cached by add unless they are given again.
  gc       DEL every cached attachment of NETNAME whose netns no longer exists or that was
           added in an earlier boot, then GC every plugin with the remaining cached
           attachments as cni.dev/valid-attachments (cniVersion 1.1.0 or later). The cache
           is taken as the complete list of live attachments: do not run gc on a network
           that a container runtime also uses.
           (cnitool gc deletes every cached attachment; this one keeps live ones.)
  status   STATUS of every plugin (cniVersion 1.1.0 or later); exit 0 when all are ready.
  restore  put back the firewall of every recorded attachment after a firewall reload.
  install-cni
           set a Kubernetes node up: copy this executable into the CNI plugin directory and
           write a network list for the node's pod CIDRs (the DaemonSet in deploy/ runs it).
  list     show every attachment on this host from the plugin's own books (firewall state and
           host-local store), and whether its host veth and firewall rules are intact. Read-only.

arguments
  NETNAME  the "name" of a network list in NETCONFPATH.
  NETNS    a network namespace path (/proc/PID/ns/net, /run/netns/NAME, ./relative/path),
           or a bare NAME, which always means {NETNS_DIR}/NAME.

options
  -i, --ifname IFNAME    interface name in the container (default: $CNI_IFNAME, else eth0).
  --container-id ID      container ID (default: $CNI_CONTAINERID, else as cnitool derives it:
                         "cnitool-" and 20 hex digits of the SHA-512 of the netns path).

environment
  NETCONFPATH    directory of network configs (default {DEFAULT_NETCONF_DIR}). Loaded as libcni loads
                 them: *.conflist in name order, then single-plugin *.conf and *.json; plugin
                 configs in NETCONFPATH/NETNAME/*.conf are appended unless the list sets
                 loadOnlyInlinedPlugins.
  CNI_PATH       plugin search path, colon separated (default {DEFAULT_CNI_PATH}).
  CNI_ARGS       extra arguments for the plugins, "KEY=VALUE;KEY=VALUE".
  CAP_ARGS       capability arguments as a JSON object, e.g.
                 '{{"portMappings":[{{"hostPort":8080,"containerPort":80,"protocol":"tcp"}}]}}';
                 each plugin receives, as runtimeConfig, the keys its "capabilities" enable.
  CNI_IFNAME     interface name (see -i).
  CNI_CACHE_DIR  where results are cached (default /var/lib/cni, libcni's): files
                 CNI_CACHE_DIR/results/NETNAME-CONTAINERID-IFNAME in libcni's format.

exit status: 0 on success, 1 when a plugin or the runner failed (the CNI error is on stderr),
2 for a usage error.
"""


class UsageError(Exception):
    pass


def _parse(argv: list[str]) -> tuple[str, dict[str, str], list[str]]:
    command, options, positional = argv[0], {}, []
    rest = iter(argv[1:])
    for arg in rest:
        if arg in ("-i", "--ifname", "--container-id"):
            value = next(rest, None)
            if value is None:
                raise UsageError(f"{arg} needs a value")
            options["ifname" if arg in ("-i", "--ifname") else "container_id"] = value
        elif arg.startswith("--ifname=") or arg.startswith("--container-id="):
            key, value = arg[2:].split("=", 1)
            options[key.replace("-", "_")] = value
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option {arg}")
        else:
            positional.append(arg)
    wanted = 2 if command in ("add", "check", "del") else 1
    if len(positional) != wanted and not (command in ("gc", "status") and len(positional) == 2):
        raise UsageError(f"{command} takes {'NETNAME NETNS' if wanted == 2 else 'NETNAME'}")
    return command, options, positional


def _netns_path(arg: str) -> str:
    """A bare name is always /run/netns/NAME, also once that netns is gone: del after
    `ip netns del` must derive the same container ID as add did."""
    if "/" not in arg and arg not in (".", ".."):
        return os.path.join(NETNS_DIR, arg)
    return os.path.abspath(arg)


def _cnitool_container_id(netns: str) -> str:
    import hashlib
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def _cni_args(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for pair in text.split(";") if text else []:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value or "=" in value:
            raise UsageError(f"invalid CNI_ARGS pair {pair!r}")
        pairs.append((key, value))
    return tuple(pairs)


def _capability_args(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"CAP_ARGS is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("CAP_ARGS must be a JSON object")
    return value


def _attachment(options: dict[str, str], netns_arg: str, environ: dict[str, str]) -> Attachment:
    from ..environment import validate_container_id, validate_ifname
    from .operations import Attachment
    netns = _netns_path(netns_arg)
    ifname = options.get("ifname") or environ.get("CNI_IFNAME") or "eth0"
    container_id = options.get("container_id") or environ.get("CNI_CONTAINERID") or _cnitool_container_id(netns)
    try:
        validate_ifname(ifname)
        validate_container_id(container_id)
    except CniError as error:
        raise UsageError(str(error).replace("CNI_IFNAME", "interface name")
                         .replace("CNI_CONTAINERID", "container ID")) from None
    return Attachment(container_id, netns, ifname, _cni_args(environ.get("CNI_ARGS", "")),
                      _capability_args(environ.get("CAP_ARGS", "")))


def _run(command: str, options: dict[str, str], positional: list[str], environ: dict[str, str]) -> int:
    from .cache import DEFAULT_CACHE_DIR, ResultCache
    from .netconf_files import load_network_list
    from .operations import ListRunner
    netlist = load_network_list(environ.get("NETCONFPATH") or DEFAULT_NETCONF_DIR, positional[0])
    search_path = tuple(p for p in (environ.get("CNI_PATH") or DEFAULT_CNI_PATH).split(os.pathsep) if p)
    runner = ListRunner(search_path, ResultCache(environ.get("CNI_CACHE_DIR") or DEFAULT_CACHE_DIR), environ)
    if command in ("gc", "status"):
        return _gc(runner, netlist) if command == "gc" else _status(runner, netlist)
    attachment = _attachment(options, positional[1], environ)
    if command == "add":
        sys.stdout.write(json.dumps(runner.add(netlist, attachment), indent=4) + "\n")
    elif command == "check":
        runner.check(netlist, attachment)
    else:
        runner.delete(netlist, attachment)
    return 0


def _gc(runner: ListRunner, netlist: NetworkList) -> int:
    report = runner.gc(netlist, lambda entry: not entry.netns or not os.path.exists(entry.netns)
                       or entry.from_an_earlier_boot)
    for line in ([f"deleted stale attachment {a}" for a in report.deleted]
                 + [f"kept attachment {a}" for a in report.valid]
                 + [f"collected {p}" for p in report.collected]):
        sys.stdout.write(line + "\n")
    for error in report.errors:
        sys.stderr.write(f"{PLUGIN_NAME} gc: {error}\n")
    return 1 if report.errors else 0


def _status(runner: ListRunner, netlist: NetworkList) -> int:
    if runner.status(netlist):
        sys.stdout.write(f"network {netlist.name}: ready\n")
    else:
        sys.stdout.write(f"network {netlist.name}: cniVersion {netlist.cni_version} has no STATUS; not asked\n")
    return 0


def run(argv: list[str], environ: dict[str, str]) -> int:
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(HELP)
        return 0
    if argv[0] == "--version":
        sys.stdout.write(f"{PLUGIN_NAME} {__version__}\n")
        return 0
    if argv[0] == "install-cni":
        from ..install_cni import run as install_cni
        return install_cni(argv[1:], environ)
    if argv[0] == "list":
        from ..inventory.cli import run as list_attachments
        return list_attachments(argv[1:])
    if argv[0] == "prune-bundles":
        from ..onefile import run_prune
        return run_prune(argv[1:], environ)
    if argv[0] == "restore":
        from ..restore_cli import run as restore
        return restore(argv[1:], environ)
    try:
        if argv[0] not in COMMANDS:
            raise UsageError(f"unknown command {argv[0]!r}")
        command, options, positional = _parse(argv)
        return _run(command, options, positional, environ)
    except UsageError as error:
        sys.stderr.write(f"{PLUGIN_NAME}: {error}\nrun '{PLUGIN_NAME} --help' for usage\n")
        return USAGE_ERROR
    except CniError as error:
        sys.stderr.write(f"{PLUGIN_NAME} {argv[0]}: {error} (CNI error code {error.code})\n")
        return 1
