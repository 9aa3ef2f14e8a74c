"""Running another program: CNI plugins (delegated IPAM, the runner), iptables, nft.

subprocess costs ~20 ms to import, so children are started with posix_spawn. Their stdin,
stdout and (when captured) stderr are memfds: nothing can block on a full pipe, and no
reader thread is needed.
"""

from __future__ import annotations

import os

# Searched after the given directories: runtimes do not always pass a PATH that holds sbin.
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


def which(name: str, directories: tuple[str, ...] | list[str]) -> str:
    """The first ``DIR/name`` that is an executable file, "" if none."""
    for directory in directories:
        if not directory:
            continue
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return ""


def find_program(name: str) -> str:
    """A tool such as iptables-restore or nft: along PATH, then the system directories."""
    return which(name, [*os.environ.get("PATH", "").split(os.pathsep), *SYSTEM_DIRS])


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def run(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
        capture_stderr: bool = True) -> tuple[int, bytes, bytes]:
    """Run argv[0] (a full path) to completion: (exit code, stdout, stderr). Without
    capture_stderr the child writes to our stderr (a plugin's diagnostics belong to the
    runtime's log) and the third value is empty. OSError if it cannot be started."""
    fds: list[int] = []
    try:
        for name in ("stdin", "stdout", "stderr") if capture_stderr else ("stdin", "stdout"):
            fds.append(os.memfd_create(f"cni-bridge-{name}", os.MFD_CLOEXEC))
        if stdin:
            os.write(fds[0], stdin)
            os.lseek(fds[0], 0, os.SEEK_SET)
        pid = os.posix_spawn(argv[0], argv, os.environ if env is None else env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)])
        _, status = os.waitpid(pid, 0)
        return (os.waitstatus_to_exitcode(status), _read_all(fds[1]),
                _read_all(fds[2]) if capture_stderr else b"")
    finally:
        for fd in fds:
            os.close(fd)
