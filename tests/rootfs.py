"""A tiny container root file system from Debian's busybox-static, for the runtime tests.

No image registry is reachable from these machines, so podman (``--rootfs``) and containerd
(an OCI image built from this directory) run containers from this.
"""

from __future__ import annotations

import os
import shutil

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "ip", "ifconfig", "wget", "httpd", "nc", "sleep", "cat", "ping", "echo", "ls", "hostname",
           "mkdir", "true", "route")


def busybox_unavailable_reason() -> str | None:
    if not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} missing (Debian package busybox-static)"
    return None


def make_busybox_rootfs(root: str) -> str:
    """Fill ``root`` with bin/busybox, applet symlinks and the few files a container expects."""
    for sub in ("bin", "etc", "proc", "sys", "dev", "tmp", "www", "run"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    for applet in APPLETS:
        link = os.path.join(root, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    for name in ("hosts", "resolv.conf", "hostname"):
        open(os.path.join(root, "etc", name), "a").close()
    with open(os.path.join(root, "www", "index.html"), "w") as f:
        f.write("hello from the container\n")
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    return root
