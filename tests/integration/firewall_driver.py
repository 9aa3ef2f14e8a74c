"""Run one firewall orchestration call in this process's network namespace; print JSON.

Used by the driver-level firewall tests (tests/firewall_node.py) as ``ip netns exec <ns>
python -m tests.integration.firewall_driver '<json request>'`` so that iptables and nft are
only ever touched inside a throwaway namespace. The request is ``{"op": ..., ...}``; the
answer ``{"ok": <result>}`` or ``{"error": {"code", "msg", "details"}}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cni_bridge.errors import CniError
from cni_bridge.firewall import driver_named, orchestrate, portmap
from cni_bridge.firewall.driver import Identity
from cni_bridge.firewall.model import AttachmentRules
from cni_bridge.firewall.portmap import PortMapping


def rules_from(doc: dict[str, Any]) -> AttachmentRules:
    return AttachmentRules(
        network=doc["network"],
        bridge=doc.get("bridge", "cnibr0"),
        container_id=doc["container_id"],
        ifname=doc.get("ifname", "eth0"),
        ips=tuple((ip, int(plen)) for ip, plen in doc.get("ips", [])),
        subnets=tuple(doc.get("subnets", [])),
        port_mappings=tuple(PortMapping(host_port=m["hostPort"], container_port=m["containerPort"],
                                        protocol=m.get("protocol", "tcp"), host_ip=m.get("hostIP", ""))
                            for m in doc.get("portMappings", [])),
        ip_masq=doc.get("ip_masq", False),
        masq_exclude=tuple(doc.get("masq_exclude", [])),
        snat=doc.get("snat", True),
        mark_masq_bit=doc.get("mark_masq_bit", 13),
        external_set_mark_chain=doc.get("external_set_mark_chain", ""),
        masq_all=doc.get("masq_all", False),
        isolate=doc.get("isolate", False),
        internal=doc.get("internal", False),
    )


def run(request: dict[str, Any]) -> object:
    op = request["op"]
    state_dir = request.get("state_dir", "")
    driver = driver_named(request.get("driver", "iptables"))
    if op == "install":
        orchestrate.install(driver, rules_from(request["rules"]), state_dir)
        return None
    if op == "install_undo":
        # ADD's rollback: install, then call the undo it returned.
        orchestrate.install(driver, rules_from(request["rules"]), state_dir)()
        return None
    if op == "remove":
        orchestrate.remove(Identity(request["network"], request["container_id"], request.get("ifname", "eth0")),
                           state_dir)
        return None
    if op == "check":
        orchestrate.check(driver, rules_from(request["rules"]), state_dir)
        return None
    if op == "gc":
        sweep = [driver_named(name) for name in request.get("sweep", [])]
        return orchestrate.gc(request["network"], [tuple(v) for v in request["valid"]], state_dir, sweep=sweep)
    if op == "flush_udp_conntrack":
        return portmap.flush_udp_conntrack(request["ports"])
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    request = json.loads(sys.argv[1])
    try:
        answer: dict[str, object] = {"ok": run(request)}
    except CniError as exc:
        answer = {"error": {"code": exc.code, "msg": exc.msg, "details": exc.details}}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
