"""Files that readers see whole or not at all, even when the writer is killed halfway.

The content is first written under a temporary name (``stage``), then given its real name in
one step: ``publish_new`` links it (atomic, and fails if the name exists, like O_EXCL: for a
claim, such as an IP reservation or a host port), ``publish_replacing`` renames it over the old
file. A writer killed in between leaves the temporary file, never a real name with an empty or
partial content.

The callers hold a lock over every writer of their directory, so a temporary name is theirs
alone and a temporary file found under the lock is a killed writer's: ``stage`` removes it,
and the callers remove theirs on DEL and GC too. It is unlinked, never truncated: after a
``publish_new`` it is also the published file, under its second name.
"""

from __future__ import annotations

import os


def discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def stage(temp: str, data: bytes, mode: int) -> None:
    """Write data to a new file `temp`, replacing (unlinking) one a killed writer left. OSError."""
    discard(temp)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        discard(temp)
        raise
    os.close(fd)


def publish_new(temp: str, path: str) -> bool:
    """Give the staged file its name unless the name exists (False then). The temp name stays
    until the next ``stage`` or ``discard``: a crash now leaves a complete file. OSError."""
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    return True


def publish_replacing(temp: str, path: str) -> None:
    """Give the staged file its name, replacing the old file in one step. OSError."""
    os.replace(temp, path)
