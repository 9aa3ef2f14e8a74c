"""The one exception type of the plugin, carrying a CNI error code.

Codes 0-99 are the CNI spec's well-known codes; 100 and up are this plugin's own,
documented in the README's error table. Keep the two in step.
"""

from __future__ import annotations

# Well-known codes from the CNI spec.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
PLUGIN_NOT_AVAILABLE_LIMITED = 51

# This plugin's own codes.
NETNS_FAILURE = 100          # CNI_NETNS cannot be opened or entered
LINK_FAILURE = 101           # a netlink operation on links, addresses or routes failed
BRIDGE_CONFLICT = 102        # the bridge name is taken by a link of another kind, or its address conflicts
INTERFACE_EXISTS = 103       # CNI_IFNAME already exists in the container
IPAM_EXHAUSTED = 104         # no free address in a range set
IPAM_CONFLICT = 105          # a requested address is unavailable or invalid
IPAM_STORE_FAILURE = 106     # the host-local store cannot be read or written
DELEGATE_FAILURE = 107       # a delegated IPAM plugin failed or could not be run
CHECK_FAILED = 108           # CHECK found a difference from prevResult or the store
FIREWALL_FAILURE = 109       # iptables-restore failed
PORT_CONFLICT = 110          # a host port is already published by another attachment
SYSCTL_FAILURE = 111         # a sysctl could not be read or written
GC_INCOMPLETE = 112          # GC removed what it could and reports what it could not
RESULT_CONVERSION = 113      # the result cannot be expressed in the config's cniVersion
INTERNAL_ERROR = 199         # a bug: the traceback goes to stderr and the log, never stdout


class CniError(Exception):
    """A failure that the plugin reports as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, object]:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg
