"""GC: release what belongs to attachments the runtime no longer knows, keep going past errors."""

from __future__ import annotations

from ..errors import GC_INCOMPLETE, INVALID_CONFIG, CniError
from ..ipam import ipam_for
from ..log import Log
from ..request import Request


def run_gc(request: Request, log: Log) -> None:
    valid = request.conf.valid_attachments
    if valid is None:
        raise CniError(INVALID_CONFIG, "cni.dev/valid-attachments: required for GC",
                       "without it every attachment would look stale")
    problems: list[str] = []
    ipam = ipam_for(request)
    if ipam is not None:
        problems += ipam.gc(valid)
    import os
    if os.path.isdir(request.conf.state_dir):  # no state: this host never installed a rule
        from ..firewall import driver_for
        from ..firewall.orchestrate import gc as gc_firewall
        # Besides the drivers the records name, the configured one looks for rules whose
        # records were lost.
        problems += gc_firewall(request.conf.name, valid, request.conf.state_dir, sweep=[driver_for(request.conf)])
    for problem in problems:
        log.error(problem)
    if problems:
        raise CniError(GC_INCOMPLETE, f"GC could not release everything ({len(problems)} problems)",
                       "; ".join(problems))
