"""The warm helper: a process that has imported everything a command needs and forks per request.

Started by the plugin itself on a call that found no helper (see warm_client.spawn_helper), in
the caller's mount and network namespaces, with ``CNI_BRIDGE_HELPER_SERVE=<socket path>``.
It serves only root callers in those same namespaces, and exits by itself:
  - after IDLE_SECONDS without a request;
  - when its executable is replaced (an upgrade: the new build uses another socket name anyway);
  - when its socket path is removed or taken over.

Each connection gets a forked child. The child reads the request, answers READY, and starts
work only after the client's GO (so a client that gave up in between never sees the request
run). It then runs main.execute, the in-process plugin's own code path, with the caller's
environment, working directory, umask, stdout and stderr, sends DONE with the exit code and
the printed bytes, and exits. Nothing it does survives into the next request.
"""

from __future__ import annotations

import fcntl
import io
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

from .warm_client import DONE, GO, READY, build_id, decode_header, namespace_ids, take_helper_lock

IDLE_SECONDS = 120.0
CHECK_EVERY = 2.0  # how often an idle helper looks at its executable and socket
REQUEST_TIMEOUT = 5.0  # a client that connects and then stalls does not hold a child forever

# Everything the five commands import lazily, imported once here so children start warm.
WARM_MODULES = (
    "environment", "config.gojson", "config.load", "config.model", "config.schema_check", "config.validate",
    "request", "result", "records", "undo", "cniargs", "process", "plugin_exec", "log", "errors",
    "commands", "commands.add", "commands.check", "commands.delete", "commands.gc", "commands.rules",
    "commands.status", "firewall", "firewall.conntrack", "firewall.driver", "firewall.iptables.driver",
    "firewall.iptables.scheme", "firewall.iptables.syntax", "firewall.iptables.tools", "firewall.model",
    "firewall.orchestrate", "firewall.portmap", "firewall.state", "ipam", "ipam.allocator",
    "ipam.delegate", "ipam.host_local", "ipam.ranges", "ipam.store", "network", "network.bridge",
    "network.container", "network.naming", "network.netlink", "network.netlink_socket", "network.netns",
    "network.pyroute2_lean", "network.sysctl",
)


def serve(path: str, inherited_lock: str | None = None) -> int:
    lock = _take_lock(path, inherited_lock)
    if lock is None:
        return 0  # another helper serves this path
    os.umask(0o077)
    _warm_up()
    identity = build_id()
    own_namespaces = namespace_ids()
    listener = _listen(path)
    listener_ino = os.stat(path).st_ino
    served = 0
    _record(lock, served)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        last_request = time.monotonic()
        while time.monotonic() - last_request < IDLE_SECONDS:
            ready, _, _ = select.select([listener], [], [], CHECK_EVERY)
            if not ready:
                if not _still_current(path, listener_ino, identity):
                    break
                continue
            conn, _ = listener.accept()
            last_request = time.monotonic()
            if _peer_allowed(conn, own_namespaces):
                _fork_child(conn, listener, lock)
                served += 1
                _record(lock, served)
            conn.close()
    finally:
        _remove_if_ours(path, listener_ino)
    return 0


def _take_lock(path: str, inherited: str | None) -> int | None:
    """The lock next to the socket: the one the spawning plugin took and handed down (its
    descriptor number in CNI_BRIDGE_HELPER_LOCK_FD), else taken here."""
    if inherited is not None and inherited.isdigit():
        fd = _inherited_lock(path, int(inherited))
    else:
        fd = take_helper_lock(path)
    if fd is not None:
        os.ftruncate(fd, 0)
    return fd


def _inherited_lock(path: str, fd: int) -> int | None:
    try:
        if os.fstat(fd).st_ino != os.stat(path + ".lock").st_ino:
            return None  # not the lock of this path: the spawner's lock was replaced
        os.set_inheritable(fd, False)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op on the file the spawner locked
    except OSError:
        os.close(fd)
        return None
    return fd


def _record(lock: int, served: int) -> None:
    """``<pid> <requests served>`` in the lock file, for people (and tests) to see it at work."""
    os.pwrite(lock, f"{os.getpid()} {served}\n".encode(), 0)


def _warm_up() -> None:
    import importlib
    for name in WARM_MODULES:
        importlib.import_module(f"cni_bridge.{name}")


def _listen(path: str) -> socket.socket:
    try:
        os.unlink(path)  # a dead helper's socket: we hold the lock, so it is no one's
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)  # umask 077: the socket is 0600 from its first moment
    os.chmod(path, 0o600)
    listener.listen(128)
    return listener


def _still_current(path: str, listener_ino: int, identity: str) -> bool:
    try:
        return os.stat(path).st_ino == listener_ino and build_id() == identity
    except OSError:
        return False


def _remove_if_ours(path: str, listener_ino: int) -> None:
    try:
        if os.stat(path).st_ino == listener_ino:
            os.unlink(path)
    except OSError:
        pass


def _peer_allowed(conn: socket.socket, own_namespaces: tuple[int, int]) -> bool:
    """Root, and in our own mount and network namespaces (checked on every connection)."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != 0:
        return False
    try:
        return namespace_ids(str(pid)) == own_namespaces
    except OSError:
        return False


def _fork_child(conn: socket.socket, listener: socket.socket, lock: int) -> None:
    try:
        pid = os.fork()
    except OSError:
        return  # the client sees the connection close before READY and runs in-process
    if pid:
        return
    code = 0
    try:
        listener.close()
        os.close(lock)  # a child outliving a killed helper must not keep the next one from starting
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _serve_one(conn)
    except BaseException:  # noqa: BLE001 - a child never returns into the accept loop
        code = 1
    finally:
        os._exit(code)


def _serve_one(conn: socket.socket) -> None:
    conn.settimeout(REQUEST_TIMEOUT)
    header, raw, fds = _receive_request(conn)
    conn.sendall(READY)
    if conn.recv(1) != GO:
        return  # the client gave up and runs the request itself
    conn.settimeout(None)
    os.setsid()  # out of the helper's session: a signal to the helper's group misses running requests
    _adopt_caller(header, fds)
    finished = _die_with_caller(conn)
    captured = io.BytesIO()
    sys.stdout = io.TextIOWrapper(captured, encoding="utf-8", write_through=True)
    from .main import execute
    rc = execute(header[0].get("CNI_COMMAND", ""), header[0], raw, helper_allowed=False)
    sys.stdout.flush()
    out = captured.getvalue()
    # The caller's pipes are closed before it gets the answer: a runtime reading them to the
    # end (as Go's exec does) never waits for this child to exit.
    _release_caller_streams()
    finished.set()
    conn.sendall(DONE + bytes([rc & 0xFF]) + len(out).to_bytes(4, "big") + out)


def _die_with_caller(conn: socket.socket) -> threading.Event:
    """SIGKILL this child when its caller goes away mid-request.

    A runtime that times a plugin out kills it, then usually sends DEL. An in-process plugin
    dies there and then; so does the request here, instead of finishing after that DEL (which
    would leave its links and rules behind). The caller sends nothing after GO, so the only
    thing a read can return is the end of the connection.
    """
    finished = threading.Event()

    def watch() -> None:
        try:
            conn.recv(1)
        except OSError:
            pass
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()
    return finished


def _release_caller_streams() -> None:
    null = os.open("/dev/null", os.O_WRONLY)
    for target in (1, 2):
        os.dup2(null, target)
    os.close(null)


def _receive_request(conn: socket.socket) -> tuple[tuple[dict[str, str], str, int], bytes, list[int]]:
    first, ancdata, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(8))
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data), 4)]
    length = int.from_bytes(first + _exact(conn, 3), "big")
    header = decode_header(_exact(conn, length))
    raw = _exact(conn, int.from_bytes(_exact(conn, 4), "big"))
    return header, raw, fds


def _exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("request cut short")
        data += chunk
    return data


def _adopt_caller(header: tuple[dict[str, str], str, int], fds: list[int]) -> None:
    """The caller's environment, directory, umask and output streams, as if it ran us."""
    env, cwd, umask = header
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    os.umask(umask)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for target, fd in zip((1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
