"""DEL: best effort and idempotent; works without the netns, from names derived from the attachment."""

from __future__ import annotations

import socket

from ..errors import CniError
from ..ipam import ipam_for
from ..log import Log
from ..network.naming import host_veth_name
from ..request import Request


def _link_exists(name: str) -> bool:
    """A cheap probe (one ioctl) that spares DEL of a gone container the netlink import."""
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _delete_container_end(request: Request, log: Log) -> None:
    """The host end is gone but the namespace may still hold our interface (an older ADD's)."""
    from ..network.netns import inside, open_container_netns
    try:
        fd = open_container_netns(request.invocation.netns)
    except CniError as exc:
        # Gone (the kernel took the veth with it), or our own namespace, whose CNI_IFNAME is
        # the host's interface and never ours to delete.
        log.info(f"container end not looked for: {exc}")
        return
    import os
    try:
        with inside(fd):
            if not _link_exists(request.invocation.ifname):
                return
            from ..network.netlink import Netlink
            with Netlink() as container:
                link = container.link(request.invocation.ifname)
                if link is not None and link.kind == "veth":
                    container.del_link(link.index)
                    log.info(f"deleted {link.name} in the container")
    finally:
        os.close(fd)


def _remove_firewall(request: Request) -> None:
    from ..firewall.state import attachment_key, is_recorded
    conf, inv = request.conf, request.invocation
    # Only an attachment whose ADD installed rules has a record: skip the firewall code otherwise.
    if is_recorded(conf.state_dir, attachment_key(conf.name, inv.container_id, inv.ifname)):
        from ..firewall.driver import Identity
        from ..firewall.orchestrate import remove
        remove(Identity(conf.name, inv.container_id, inv.ifname), conf.state_dir)


def run_del(request: Request, log: Log) -> None:
    conf, inv = request.conf, request.invocation
    errors: list[CniError] = []
    host_name = host_veth_name(conf.name, inv.container_id, inv.ifname)
    try:
        if _link_exists(host_name):
            from ..network.netlink import Netlink
            with Netlink() as host:
                host.del_link(host_name)  # the container end goes with it
            log.info(f"deleted veth {host_name}")
        elif inv.netns:
            _delete_container_end(request, log)
    except CniError as exc:
        errors.append(exc)
    try:
        _remove_firewall(request)
    except CniError as exc:
        errors.append(exc)
    try:
        ipam = ipam_for(request)
        if ipam is not None:
            ipam.delete()
    except CniError as exc:
        errors.append(exc)
    if errors:
        raise _all_of(errors)


def _all_of(errors: list[CniError]) -> CniError:
    """One error that names every problem: DEL goes on after a failure, so may find several.

    The code is the first error's; the details list each error in turn, so an operator
    fixes them all at once instead of discovering them one DEL at a time.
    """
    if len(errors) == 1:
        return errors[0]
    first = errors[0]
    listed = "; ".join(f"({n}) {error}" for n, error in enumerate(errors, 1))
    return CniError(first.code, f"{first.msg} (and {len(errors) - 1} more: see details)", listed)
