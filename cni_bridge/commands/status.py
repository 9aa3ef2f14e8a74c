"""STATUS: could an ADD succeed right now?"""

from __future__ import annotations

from ..ipam import ipam_for
from ..log import Log
from ..request import Request


def run_status(request: Request, log: Log) -> None:
    ipam = ipam_for(request)
    if ipam is not None:
        ipam.status()
