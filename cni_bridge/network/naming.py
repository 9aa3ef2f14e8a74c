"""Names and addresses derived from stable inputs, so DEL and GC can find them without state."""

from __future__ import annotations

import hashlib


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """`veth` + 11 hex digits: 15 bytes, the kernel's limit.

    The reference picks a random name, so after the container's namespace is gone nothing
    says which host link was its; a name derived from the attachment can always be found.
    """
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return "veth" + digest[:11]


def bridge_mac(bridge: str) -> str:
    """A locally administered unicast MAC fixed by the bridge name.

    Without one the kernel gives the bridge the lowest MAC of its ports, which changes as
    containers come and go and leaves neighbours with stale ARP entries.
    """
    digest = hashlib.sha256(f"cni-bridge\0{bridge}".encode()).digest()
    first = (digest[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))
