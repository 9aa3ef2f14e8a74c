"""Interface names: the one check of a name the kernel would take, and the names and
addresses we derive from stable inputs, so DEL and GC can find them without state."""

from __future__ import annotations

# IFNAMSIZ is 16 with the terminating NUL.
MAX_IFNAME_BYTES = 15

# The kernel's isspace() (lib/ctype.c) on each byte of the name: ASCII whitespace and 0xa0,
# Latin-1's no-break space, which is also a byte of UTF-8 characters like "à" (c3 a0).
_KERNEL_SPACE_BYTES = frozenset(b"\t\n\v\f\r \xa0")


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an interface name of ours, or None if it can.

    The kernel's dev_valid_name: 1 to 15 bytes, not "." or "..", no "/", ":" or whitespace,
    checked byte by byte as the kernel does and also per Unicode character as the reference
    plugins do (Go's unicode.IsSpace). Beyond the kernel's rules: no "%", which the kernel
    expands as a template ("eth%d" is created as "eth0", a link nobody asked for); no quote
    or backslash, which firewall rule syntax cannot carry in an interface match (iptables-save
    prints the name unquoted); no unprintable character. The answer completes a sentence
    starting with the name: "is empty", "contains '/'"...
    """
    if not name:
        return "is empty"
    try:
        raw = name.encode()
    except UnicodeEncodeError:  # os.environ keeps undecodable bytes as lone surrogates
        return "is not valid UTF-8"
    if len(raw) > MAX_IFNAME_BYTES:
        return f"is too long: {len(raw)} bytes, the kernel allows {MAX_IFNAME_BYTES}"
    if name in (".", ".."):
        return "is . or .., which the kernel refuses"
    for char in name:
        if char in "/:":
            return f"contains {char!r}, which the kernel refuses"
        if char.isspace():
            return f"contains the whitespace character {char!r}"
        if not _KERNEL_SPACE_BYTES.isdisjoint(char.encode()):
            return f"contains {char!r}, whose UTF-8 byte 0xa0 the kernel reads as whitespace"
        if char == "%":
            return "contains '%', which the kernel reads as a name template (eth%d becomes eth0)"
        if char in "\"'\\":
            return f"contains {char!r}, which firewall rules cannot carry in an interface name"
        if not char.isprintable():
            return f"contains the unprintable character {char!r}"
    return None


def attachment_digest(network: str, container_id: str, ifname: str) -> str:
    """sha256 of an attachment's identity, hex: the source of every name derived from it
    (host veth, firewall chains, state files). NUL-separated, so ("a", "bc") and ("ab", "c")
    differ; ifname included, so two interfaces of one container get their own."""
    from ..digest import sha256_hex  # only where a name is derived: validating a name must stay cheap

    return sha256_hex(f"{network}\0{container_id}\0{ifname}".encode())


def host_veth_name(network: str, container_id: str, ifname: str) -> str:
    """`veth` + 11 hex digits: 15 bytes, the kernel's limit.

    The reference picks a random name, so after the container's namespace is gone nothing
    says which host link was its; a name derived from the attachment can always be found.
    """
    return "veth" + attachment_digest(network, container_id, ifname)[:11]


def bridge_mac(bridge: str) -> str:
    """A locally administered unicast MAC fixed by the bridge name.

    Without one the kernel gives the bridge the lowest MAC of its ports, which changes as
    containers come and go and leaves neighbours with stale ARP entries.
    """
    from ..digest import sha256_digest

    digest = sha256_digest(f"cni-bridge\0{bridge}".encode())
    first = (digest[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))
