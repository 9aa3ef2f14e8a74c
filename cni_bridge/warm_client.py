"""The plugin's side of the warm helper: hand one request over, or say it must run in-process.

Runs on every helped call before any heavy import, so it uses only `_socket` (the `socket`
module's enum set-up costs ~10 ms) and os.

Hand-over, as seen from here (the helper's side is in warm_server):
  1. connect to the socket of this build and these namespaces, send the request
     (environment, working directory, umask, stdin bytes; stdout and stderr as descriptors);
  2. wait, bounded, for the child's READY byte;
  3. send GO: from here on the request belongs to the helper and is never run here too;
  4. read DONE (exit code and the bytes the plugin printed) and print them.
A failure before GO falls back to the in-process plugin; the child does no work without GO, so
the request runs once. A failure after GO is reported as CNI error 11 (try again): the request
ran once or was cut short, as a SIGKILL of the in-process plugin would leave it.
"""

from __future__ import annotations

import _socket
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HELPED_COMMANDS = frozenset(("ADD", "DEL", "CHECK", "GC", "STATUS"))
DEFAULT_STATE_DIR = "/run/cni-bridge"
SERVE_VARIABLE = "CNI_BRIDGE_HELPER_SERVE"
LOCK_FD_VARIABLE = "CNI_BRIDGE_HELPER_LOCK_FD"  # the spawner's locked descriptor, handed to the helper
LOCK_FD = 3
READY, GO, DONE = b"R", b"G", b"D"
READY_TIMEOUT = 2.0  # seconds a busy helper may take to fork before we run in-process
REQUIRE_WAIT = 10.0  # seconds "require" mode waits for a freshly started helper


CONFIG_KEY = "warmHelper"
VARIABLE = "CNI_BRIDGE_HELPER"

OFF_VALUES = frozenset(("0", "false", "no", "off"))


def mode(environ: dict[str, str], doc: dict[str, Any]) -> str:
    """on (the default), off, or require (tests: never in-process, proves the helper ran it).

    CNI_BRIDGE_HELPER wins (0/false/no/off, require, anything else on); without it the
    config's "warmHelper": false turns it off.
    """
    value = environ.get(VARIABLE)
    if value is None:
        return "off" if doc.get(CONFIG_KEY) is False else "on"
    if value.lower() in OFF_VALUES:
        return "off"
    return "require" if value == "require" else "on"


def for_plugins_we_start(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` for the plugins this process starts (the runner's): the helper off when our
    mount namespace ends with us, the rule ``spawn_helper`` applies to its own caller.

    Under ``ip netns exec NODE cni-bridge add`` the runner has a mount namespace of its own, and
    the plugins it starts share it: to them their parent's namespace outlives them, and each
    would start a helper no later call can reach (see ``spawn_helper``). A CNI_BRIDGE_HELPER of
    the caller's is left as it is: it decides the mode (see ``mode``).
    """
    if VARIABLE in environ or _mount_namespace_outlives_us():
        return environ
    return {**environ, VARIABLE: "0"}


def build_id() -> str:
    """Identifies this build: the executable file (a replaced file is a new inode and mtime)."""
    target = sys.executable if getattr(sys, "frozen", False) else os.path.dirname(os.path.abspath(__file__))
    st = os.stat(os.path.realpath(target))
    if not getattr(sys, "frozen", False):  # from source: the newest module file counts
        st = max((os.stat(os.path.join(target, n)) for n in os.listdir(target) if n.endswith(".py")),
                 key=lambda s: s.st_mtime_ns)
    from . import __version__
    return f"{__version__}-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def namespace_ids(pid: str = "self") -> tuple[int, int]:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino, os.stat(f"/proc/{pid}/ns/net").st_ino


def socket_path(state_dir: str) -> str:
    mnt, net = namespace_ids()
    import zlib  # builtin, no file to load
    tag = f"{zlib.crc32(build_id().encode()):08x}"
    return os.path.join(state_dir, f"helper-{tag}-{mnt}-{net}.sock")


def _document(raw: bytes) -> dict[str, Any] | None:
    from .jsonscan import loads
    try:
        doc = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # the in-process plugin explains the error
    return doc if isinstance(doc, dict) else None


def _state_dir(doc: dict[str, Any]) -> str | None:
    state_dir = doc.get("stateDir", DEFAULT_STATE_DIR)
    return state_dir if isinstance(state_dir, str) and os.path.isabs(state_dir) else None


class HandOver:
    """What happened: ``rc`` is set when the helper answered (or owns the request)."""

    def __init__(self, rc: int | None = None, spawn_path: str | None = None) -> None:
        self.rc = rc
        self.spawn_path = spawn_path

    def start_helper_if_missing(self) -> None:
        if self.spawn_path is not None:
            spawn_helper(self.spawn_path)


def hand_over(raw: bytes, environ: dict[str, str]) -> HandOver:
    doc = _document(raw)
    wanted = "off" if doc is None else mode(environ, doc)
    if doc is None or wanted == "off":
        return HandOver()
    state_dir = _state_dir(doc)
    # Only a stateDir that exists and that we can write to: the helper never creates the
    # directory (the first stateful command does), nor tries a read-only one.
    if state_dir is None or not os.path.isdir(state_dir) or not os.access(state_dir, os.W_OK):
        return HandOver()
    try:
        path = socket_path(state_dir)
    except OSError:
        return HandOver()
    if len(path.encode()) >= 108:
        return HandOver()
    required = wanted == "require"
    rc = _try(path, raw, environ)
    if rc is None and required:
        deadline = _now() + (REQUIRE_WAIT if spawn_helper(path) else 0.0)
        while rc is None and _now() < deadline:
            _sleep(0.05)
            rc = _try(path, raw, environ)
        if rc is None:
            _write_error(11, "the warm helper did not start (CNI_BRIDGE_HELPER=require)", path)
            return HandOver(1)
    return HandOver(rc, None if rc is not None else path)


def _now() -> float:
    import time
    return time.monotonic()


def _sleep(seconds: float) -> None:
    import time
    time.sleep(seconds)


def _try(path: str, raw: bytes, environ: dict[str, str]) -> int | None:
    """The exit code once the helper owns the request; None when it never did."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_uid != 0 or (st.st_mode & 0o177) != 0:
        return None  # not a socket only root can use: never hand it a request
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(READY_TIMEOUT)
        try:
            sock.connect(path)
            peer = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            if int.from_bytes(peer[4:8], sys.byteorder) != 0:
                return None
            _send_request(sock, raw, environ)
            if _recv_exact(sock, 1) != READY:
                return None
            sock.sendall(GO)
        except OSError:
            return None
        # Committed: the helper owns the request now.
        sock.settimeout(None)
        return _receive_answer(sock)
    finally:
        sock.close()


def encode_header(environ: dict[str, str], cwd: str, umask: int) -> bytes:
    """The caller's context as NUL-separated fields (none of them can hold a NUL): the
    working directory, the umask, then KEY=VALUE per variable. Not JSON: json's import
    alone would cost the client more than the whole hand-over."""
    fields = [os.fsencode(cwd), b"%d" % umask, *(os.fsencode(f"{k}={v}") for k, v in environ.items())]
    return b"\0".join(fields)


def decode_header(header: bytes) -> tuple[dict[str, str], str, int]:
    """(environment, working directory, umask) from encode_header's bytes."""
    cwd, umask, *variables = header.split(b"\0")
    environ = dict(os.fsdecode(v).partition("=")[::2] for v in variables)
    return environ, os.fsdecode(cwd), int(umask)


def _send_request(sock: Any, raw: bytes, environ: dict[str, str]) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    header = encode_header(environ, os.getcwd(), umask)
    body = len(header).to_bytes(4, "big") + header + len(raw).to_bytes(4, "big") + raw
    fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (1, 2))
    sent = sock.sendmsg([body[:1]], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    sock.sendall(body[sent:])


def _recv_exact(sock: Any, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive_answer(sock: Any) -> int:
    try:
        head = _recv_exact(sock, 6)
        if len(head) == 6 and head[:1] == DONE:
            length = int.from_bytes(head[2:6], "big")
            out = _recv_exact(sock, length)
            if len(out) == length:
                sys.stdout.buffer.write(out)
                sys.stdout.flush()
                return head[1]
    except OSError:
        pass
    _write_error(11, "the warm helper's child ended before answering; the request may be half done",
                 "try again: ADD, DEL and GC are safe to repeat")
    return 1


def _write_error(code: int, msg: str, details: str) -> None:
    import json
    sys.stdout.write(json.dumps({"cniVersion": "1.0.0", "code": code, "msg": msg, "details": details},
                                indent=4) + "\n")
    sys.stdout.flush()


def spawn_helper(path: str) -> bool:
    """Start a helper for ``path`` in our namespaces, detached; it exits when idle or outdated.
    False when no helper will come for this caller (see below).

    The spawner takes the helper's lock itself and hands the locked descriptor down: of many
    first calls at once, one spawns and the others see the lock held, so no crowd of helpers
    starts only to exit. Only a caller whose parent (the runtime) shares its mount namespace
    spawns one: ``ip netns exec plugin`` makes a new mount namespace for that one call, whose
    helper no later call could reach; it would idle for nothing, one per call.
    """
    if not _mount_namespace_outlives_us():
        return False
    lock = take_helper_lock(path)
    if lock is None:
        return True  # a helper holds it (or one is being started): do not pile up more
    try:
        if getattr(sys, "frozen", False):
            argv = [sys.executable]
        else:
            argv = [sys.executable, "-m", "cni_bridge"]
        env = {SERVE_VARIABLE: path, LOCK_FD_VARIABLE: str(LOCK_FD), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDWR, 0),
                   (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2),
                   (os.POSIX_SPAWN_DUP2, lock, LOCK_FD)]  # dup2 leaves the copy inheritable
        os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
    except OSError:
        return False  # no helper this time: the plugin works without one
    finally:
        os.close(lock)  # the helper's copy keeps the lock (flock belongs to the open file)
    return True


def _mount_namespace_outlives_us() -> bool:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino
    except OSError:
        return False


def take_helper_lock(path: str) -> int | None:
    """The helper lock of ``path``, taken (the spawner's, or a helper's started by hand);
    None when someone holds it or it cannot be opened."""
    import fcntl
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
