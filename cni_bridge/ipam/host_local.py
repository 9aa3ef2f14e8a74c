"""The built-in host-local IPAM, as the plugin's commands see it."""

from __future__ import annotations

import ipaddress
import os

from ..errors import INVALID_CONFIG, PLUGIN_NOT_AVAILABLE, CniError
from ..result import DNS, IPConfig, Result
from . import allocator, boot_scope
from .store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config.model import IpamConf
    from ..request import Request


def read_resolv_conf(path: str) -> DNS:
    dns = DNS()
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise CniError(INVALID_CONFIG, f"ipam.resolvConf: cannot read {path}: {exc.strerror}") from None
    for line in lines:
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver" and values:
            dns.nameservers.append(values[0])
        elif key == "domain" and values:
            dns.domain = values[0]
        elif key == "search":
            dns.search.extend(values)
        elif key == "options":
            dns.options.extend(values)
    return dns


class HostLocal:
    def __init__(self, request: Request, ipam: IpamConf) -> None:
        self.request = request
        self.ipam = ipam
        self.store = Store(ipam.data_dir, request.conf.name)

    def _exists(self) -> bool:
        return os.path.isdir(self.store.directory)

    def add(self) -> Result:
        cid, ifname = self.request.attachment
        requested = [ipaddress.ip_address(ip) for ip in self.request.requested_ips]
        with self.store.lock():
            mark = boot_scope.settle(self.store)
            allocations = allocator.allocate(self.store, self.ipam.range_sets, cid, ifname, requested)
            boot_scope.mark_reserved(self.store, (a.ip for a in allocations), mark)
        result = Result(
            ips=[IPConfig(address=f"{a.ip}/{a.prefixlen}", gateway=str(a.gateway) if a.gateway else "")
                 for a in allocations],
            routes=list(self.ipam.routes),
        )
        if self.ipam.resolv_conf:
            result.dns = read_resolv_conf(self.ipam.resolv_conf)
        return result

    def delete(self) -> None:
        if self._exists():  # DEL of an unknown network must not create its directory
            allocator.release(self.store, *self.request.attachment)

    def check(self, ips: list[IPConfig]) -> None:
        allocator.check(self.store, *self.request.attachment, [ipaddress.ip_address(ip.ip) for ip in ips])

    def gc(self, valid: frozenset[tuple[str, str]]) -> list[str]:
        if not self._exists():
            return []
        problems: list[CniError] = []
        with self.store.lock():
            try:
                boot_scope.settle(self.store, mark_unknown=True, errors=problems)
            except CniError as exc:  # GC goes on: the reservations it releases do not depend on the boot
                problems.append(exc)
            _, errors = allocator.gc(self.store, valid)
        return [str(e) for e in problems + errors]

    def status(self) -> None:
        directory = self.store.directory
        parent = directory if self._exists() else self.ipam.data_dir
        probe = parent
        while not os.path.lexists(probe):  # the store is created on first ADD: its nearest ancestor must be writable
            probe = os.path.dirname(probe) or "/"
        if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
            raise CniError(PLUGIN_NOT_AVAILABLE, f"host-local store {directory} is not writable")
        if not self._exists():
            return
        try:
            with self.store.lock():
                boot_scope.settle(self.store, mark_unknown=True)  # an earlier boot's reservations are not "in use"
        except CniError as exc:
            raise CniError(PLUGIN_NOT_AVAILABLE, exc.msg, exc.details) from None
        for index, range_set in enumerate(self.ipam.range_sets):
            if not allocator.has_free_address(self.store, range_set):
                raise CniError(PLUGIN_NOT_AVAILABLE, f"no free address in range set {index} ({range_set})",
                               "every address of the range set is reserved")

