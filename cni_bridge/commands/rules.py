"""The firewall's view of one attachment, shared by ADD and CHECK."""

from __future__ import annotations

from ..firewall.model import AttachmentRules
from ..request import Request
from ..result import IPConfig


def attachment_rules(request: Request, ips: list[IPConfig]) -> AttachmentRules:
    conf = request.conf
    return AttachmentRules(
        network=conf.name, bridge=conf.bridge,
        container_id=request.invocation.container_id, ifname=request.invocation.ifname,
        ips=tuple((ip.ip, ip.prefixlen) for ip in ips),
        port_mappings=conf.port_mappings,
        ip_masq=conf.ip_masq, masq_exclude=conf.masq_exclude,
        snat=conf.snat, mark_masq_bit=conf.mark_masq_bit,
        external_set_mark_chain=conf.external_set_mark_chain, masq_all=conf.masq_all,
        isolate=conf.isolate, internal=conf.internal,
    )
