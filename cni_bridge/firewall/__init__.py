"""The host firewall of every attachment: masquerade, published ports, forwarding accepts,
isolation. Read it in this order:

- driver.py       the driver interface every backend implements, and the types it speaks
- iptables/       the iptables backend (nf_tables or legacy flavour): scheme.py is the rule
                  scheme as data, syntax.py the restore/save text, tools.py runs the tools,
                  placement.py where restored rules go back, driver.py implements the interface
- nftables/       the nftables backend, the table inet cni-bridge: scheme.py (the table as
                  data), syntax.py (libnftables JSON in and out), tools.py (runs nft -j),
                  compat.py (accepts in an iptables FORWARD chain whose policy drops),
                  driver.py implements the interface
- model.py        the firewall facts of one attachment, backend-independent, and their checks
- portmap.py      published ports: the mapping model, host-port claims, route_localnet, the
                  UDP conntrack flush (conntrack.py)
- state.py        the books: per-attachment records, users of shared resources, port claims
- orchestrate.py  install (all or nothing), remove, check and gc, written once over a driver
- restore.py      `cni-bridge restore`: what a firewall reload took, put back from the records

This module only picks the driver; it imports nothing heavy, since config/model.py imports
portmap.py on every command.
"""

from __future__ import annotations

import os

from ..errors import FIREWALL_FAILURE, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .driver import FirewallDriver, Identity

    class Configured(Protocol):
        @property
        def firewall_backend(self) -> str: ...
        @property
        def state_dir(self) -> str: ...

DRIVERS = ("iptables", "nftables")
IPTABLES_UNITS = ("4", "6")


def driver_named(name: str) -> FirewallDriver:
    """The driver a record names (a DEL uses the one that installed, whatever the config says)."""
    if name == "iptables":
        from .iptables.driver import IptablesDriver
        return IptablesDriver()
    if name == "nftables":
        from .nftables.driver import NftablesDriver
        return NftablesDriver()
    raise CniError(FIREWALL_FAILURE, f"unknown firewall driver {name!r}", f"known drivers: {', '.join(DRIVERS)}")


def driver_for(conf: Configured, recorded: Identity | None = None) -> FirewallDriver:
    """The driver a configuration asks for (config/model.py has reconciled firewallBackend with
    the reference keys ipMasqBackend and backend). With `recorded` (CHECK), an attachment the
    configuration leaves the choice for is checked with the driver that installed it."""
    if recorded is not None and conf.firewall_backend not in DRIVERS:
        installed = _installed_by(conf.state_dir, recorded)
        if installed:
            return driver_named(installed)
    return driver_named(backend_for(conf.firewall_backend, conf.state_dir))


def _installed_by(state_dir: str, identity: Identity) -> str:
    import json

    from .state import attachment_key, record_path
    try:
        with open(record_path(state_dir, attachment_key(identity.network, identity.container_id, identity.ifname)),
                  encoding="utf-8") as f:
            return str(json.load(f).get("driver", "iptables"))
    except (OSError, ValueError, AttributeError):
        return ""


def backend_for(chosen: str, state_dir: str) -> str:
    """ "iptables" or "nftables" for a configured backend ("iptables", "nftables", "auto", "").

    Nothing configured: iptables, unless iptables-restore is missing and nft is there (the
    reference plugins' default). "auto": the backend our attachments on this host already use
    (mixing works, but one backend keeps isolation whole and the rules in one place); on a
    host without any, nftables where the host's iptables is the nf_tables flavour (the
    firewall already lives in nf_tables) and nft is installed; iptables where it is legacy.
    """
    if chosen in DRIVERS:
        return chosen
    from .iptables import tools as iptables
    from .nftables import tools as nftables
    if chosen == "auto":
        in_use = _backends_in_use(state_dir)
        if len(in_use) == 1:
            return in_use.pop()
        if "iptables" in in_use or not nftables.available():
            return "iptables"
        if not iptables.which("iptables-restore"):
            return "nftables"
        return "nftables" if iptables.backend() == iptables.NFT else "iptables"
    if not iptables.which("iptables-restore") and nftables.available():
        return "nftables"
    return "iptables"


def _backends_in_use(state_dir: str) -> set[str]:
    """The backends whose shared resources have users in the state directory (state.py keeps
    them per unit: "4" and "6" are iptables', "inet" nftables')."""
    shared = os.path.join(state_dir, "shared")
    try:
        units = os.listdir(shared)
    except OSError:
        return set()
    used = set()
    for unit in units:
        try:
            if os.listdir(os.path.join(shared, unit)):
                used.add("iptables" if unit in IPTABLES_UNITS else "nftables")
        except OSError:
            continue  # removed meanwhile by the unit's last user
    return used
