"""The host firewall of every attachment: masquerade, published ports, forwarding accepts,
isolation. Read it in this order:

- driver.py       the driver interface every backend implements, and the types it speaks
- iptables/       the iptables backend (nf_tables or legacy flavour): scheme.py is the rule
                  scheme as data, syntax.py the restore/save text, tools.py runs the tools,
                  driver.py implements the interface
- model.py        the firewall facts of one attachment, backend-independent, and their checks
- portmap.py      published ports: the mapping model, host-port claims, route_localnet, the
                  UDP conntrack flush (conntrack.py)
- state.py        the books: per-attachment records, users of shared resources, port claims
- orchestrate.py  install (all or nothing), remove, check and gc, written once over a driver

This module only picks the driver; it imports nothing heavy, since config/model.py imports
portmap.py on every command.
"""

from __future__ import annotations

from ..errors import FIREWALL_FAILURE, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .driver import FirewallDriver

DRIVERS = ("iptables",)


def driver_named(name: str) -> FirewallDriver:
    """The driver a record names (a DEL uses the one that installed, whatever the config says)."""
    if name == "iptables":
        from .iptables.driver import IptablesDriver
        return IptablesDriver()
    raise CniError(FIREWALL_FAILURE, f"unknown firewall driver {name!r}", f"known drivers: {', '.join(DRIVERS)}")
