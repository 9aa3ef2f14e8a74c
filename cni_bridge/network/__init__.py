"""Links, addresses, routes, namespaces and sysctls: the kernel side of the plugin."""
