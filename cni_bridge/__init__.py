"""cni-bridge: a CNI plugin doing bridge + host-local + portmap in one process."""

__version__ = "0.1.0"
PLUGIN_NAME = "cni-bridge"
