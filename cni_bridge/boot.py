"""Which boot this is: the one reading of the kernel's boot ID for every caller.

The firewall state and the host-local store both discard what an earlier boot left
behind; they must agree on what "this boot" is, and on what to do when it cannot be
told (nothing: an unknown boot is never a reason to throw state away).
"""

from __future__ import annotations

import re

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# The kernel prints a random UUID, lowercase, with a newline.
_BOOT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def current_boot_id() -> str | None:
    """The kernel's boot ID, or None when it cannot be read or is not a UUID.

    None covers a /proc that is missing or masked in a sandbox and anything mounted
    over the file: a value we cannot trust must not decide that a reboot happened.
    """
    try:
        with open(BOOT_ID_PATH, "rb") as f:
            raw = f.read(128)
    except OSError:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    return text if _BOOT_ID.fullmatch(text) else None
