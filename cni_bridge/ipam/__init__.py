"""Built-in host-local IPAM: range models, the on-disk store and the allocator.

The store is byte-compatible with the reference host-local plugin
(containernetworking/plugins), so a node can switch between the two or run both
against one network's dataDir. Nothing here touches netlink.
"""
