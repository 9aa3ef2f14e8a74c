"""``cni-bridge install-cni``: set a Kubernetes node up for cni-bridge.

Run by the DaemonSet of deploy/cni-bridge.yaml on every node, with the host's CNI directories
mounted, and by ``./build.sh install`` for the executable alone. Two things, each atomic, each
left alone when it is already right:

- the executable: the single file (``dist/cni-bridge``: the launcher and the bundle, see
  onefile.py) is copied next to the plugins under a temp name, synced, and renamed over
  ``cni-bridge`` with rename(2), so a runtime starting the plugin during an upgrade finds
  either the old or the new plugin, never none and never half a copy;
- the network list for the node's pod CIDRs: a temp file in the same directory, fsynced, renamed.

Never imported on the plugin's path: only ``cni-bridge install-cni`` loads it.
"""

from __future__ import annotations

import fcntl
import http.client
import ipaddress
import json
import math
import os
import shutil
import signal
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

from . import PLUGIN_NAME, onefile
from .environment import SAFE_NAME
from .errors import CniError
from .main import load_netconf
from .records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

    Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CONF_NAME = "10-cni-bridge.conflist"
DEFAULT_NETWORK_NAME = "cni-bridge"
DEFAULT_BRIDGE = "cnibr0"
DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_IPAM_DATA_DIR = "/var/lib/cni/networks"
# Debian 12's containerd and podman (libcni 1.1) read results up to 1.0.0; libcni 1.2 and later
# pick the newest of cniVersions, and with 1.1.0 get GC and STATUS.
CNI_VERSION = "1.0.0"
CNI_VERSIONS = ["1.0.0", "1.1.0"]
# The layout before the single file: bundles as cni-bridge-<hash>.d/ and a symlink into one.
OLD_BUNDLE_PREFIX = f"{PLUGIN_NAME}-"
OLD_BUNDLE_SUFFIX = ".d"
COPY_CHUNK = 1 << 20
API_TIMEOUT_SECONDS = 10.0
# How soon a failed run is retried in watch mode (sooner than the interval: a new node waits
# for its pod CIDR, and every second without a network list is a second the node is NotReady).
RETRY_SECONDS = 5.0
USAGE_ERROR = 2

HELP = f"""\
usage: {PLUGIN_NAME} install-cni [options]

Sets a Kubernetes node up for {PLUGIN_NAME}: copies this executable into the host's CNI plugin
directory and writes a network list that gives pods addresses from the node's pod CIDRs.
Meant for the DaemonSet of deploy/cni-bridge.yaml, which mounts the host's directories.
Run again with the same input, it changes nothing and says so. An option wins over its
environment variable; lists are comma separated or the option is repeated.

pod CIDRs (one per family: IPv4, IPv6 or both)
  --pod-cidr CIDR[,CIDR]      $POD_CIDRS
        the node's pod CIDRs. Without them, they are read from the Node object's
        spec.podCIDRs, which kube-controller-manager sets when it runs with
        --allocate-node-cidrs and --cluster-cidr.
  --node-name NAME            $NODE_NAME
        the Node to read them from (in the DaemonSet: the downward API's spec.nodeName).
  --api-server URL            $KUBERNETES_SERVICE_HOST, $KUBERNETES_SERVICE_PORT
        the API server, https only (default https://HOST:PORT from the two variables the
        kubelet puts in every pod).
  --service-account-dir DIR
        where the service account's "token" and "ca.crt" are (default
        {DEFAULT_SERVICE_ACCOUNT_DIR}); the CA is the only one trusted.
  --cluster-cidr CIDR[,CIDR]  $CLUSTER_CIDRS
        required with a network list: the cluster's pod CIDRs, kube-controller-manager's
        --cluster-cidr. Each pod CIDR must lie inside the cluster CIDR of its family; traffic
        to them is not masqueraded (ipMasqExclude), so pods see each other's addresses.

the network list
  --conf-dir DIR              $CNI_CONF_DIR       default {DEFAULT_CONF_DIR}
  --conf-name FILE            $CNI_CONF_NAME      default {DEFAULT_CONF_NAME} (must end in .conflist)
  --network-name NAME         $CNI_NETWORK_NAME   default {DEFAULT_NETWORK_NAME}
  --bridge NAME               $CNI_BRIDGE_NAME    default {DEFAULT_BRIDGE}
  --mtu N                     $CNI_MTU            default: none in the list, so the plugin takes
                                                  the MTU of the link carrying the default route
  The list is written as a whole (temp file, fsync, rename) and only if it differs:
  cniVersion {CNI_VERSION} with cniVersions {json.dumps(CNI_VERSIONS)}, one {PLUGIN_NAME} plugin with
  isGateway, isDefaultGateway, ipMasq, ipMasqExclude = the cluster CIDRs, hairpinMode, the
  portMappings capability (hostPort), host-local ranges = the pod CIDRs (gateway: the first
  address) in {DEFAULT_IPAM_DATA_DIR}. A network config file that sorts before it in the
  directory is reported: containerd and CRI-O use the first.

the executable
  --bin-dir DIR               $CNI_BIN_DIR        default {DEFAULT_BIN_DIR}
  --executable FILE
        the single-file executable to install (default: the one this was started as, else
        {PLUGIN_NAME} beside the bundle directory this runs from, as dist/{PLUGIN_NAME} is
        beside dist/{PLUGIN_NAME}.d). It is copied into the plugin directory under a temp name,
        synced, and renamed to {PLUGIN_NAME}; plugins already running are not disturbed (they
        run from their extraction in the bundle cache). A {PLUGIN_NAME} there that is neither
        such a file nor the symlink of an older install is never replaced; an older install's
        bundle directories ({OLD_BUNDLE_PREFIX}<hash>{OLD_BUNDLE_SUFFIX}/) are removed, the one its symlink pointed
        to only at the next upgrade (a plugin started from it may still be loading files).
  --executable-only
        install the executable only; no network list, no CIDRs needed.

running
  --watch SECONDS             $INSTALL_CNI_WATCH
        after installing, stay and check again every SECONDS, repairing what was removed or
        changed (pod CIDRs are looked up once: Kubernetes never changes them). Failures are
        retried after {RETRY_SECONDS:g} seconds (e.g. while the Node has no pod CIDR yet).
        SIGTERM or SIGINT end it with status 0. Default 0: exit after one run.
  -h, --help                  this text

exit status: 0 when everything is in place (changed or not), 1 when something failed (a file
operation, the API server), 2 for invalid options or input.
"""


class InputError(Exception):
    """Invalid options or input: running again will not help."""


class InstallError(Exception):
    """A failure of the host or of the API server: running again may help."""


@record(frozen=True)
class Settings:
    pod_cidrs: tuple[tuple[str, str], ...]  # (CIDR, where it came from)
    cluster_cidrs: tuple[tuple[str, str], ...]
    node_name: str
    api_server: str
    service_account_dir: str
    bin_dir: str
    conf_dir: str
    conf_name: str
    network_name: str
    bridge: str
    mtu: int | None
    executable: str
    executable_only: bool
    watch: float


# flag -> (setting, environment variable); a setting without a variable has "".
_OPTIONS = {
    "--pod-cidr": ("pod_cidrs", "POD_CIDRS"),
    "--cluster-cidr": ("cluster_cidrs", "CLUSTER_CIDRS"),
    "--node-name": ("node_name", "NODE_NAME"),
    "--api-server": ("api_server", ""),
    "--service-account-dir": ("service_account_dir", ""),
    "--bin-dir": ("bin_dir", "CNI_BIN_DIR"),
    "--conf-dir": ("conf_dir", "CNI_CONF_DIR"),
    "--conf-name": ("conf_name", "CNI_CONF_NAME"),
    "--network-name": ("network_name", "CNI_NETWORK_NAME"),
    "--bridge": ("bridge", "CNI_BRIDGE_NAME"),
    "--mtu": ("mtu", "CNI_MTU"),
    "--executable": ("executable", ""),
    "--watch": ("watch", "INSTALL_CNI_WATCH"),
}
_LISTS = ("pod_cidrs", "cluster_cidrs")
_SWITCHES = {"--executable-only": "executable_only"}
# Variables read by name rather than through _OPTIONS; the help test checks every one is documented.
OTHER_VARIABLES = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


# --- options --------------------------------------------------------------------------------

def _split_list(text: str, source: str) -> list[tuple[str, str]]:
    return [(item.strip(), source) for item in text.split(",") if item.strip()]


def _collect(argv: list[str]) -> tuple[dict[str, list[tuple[str, str]]], set[str]]:
    """Option values as given ((value, flag) pairs per setting), and the switches set."""
    values: dict[str, list[tuple[str, str]]] = {}
    switches: set[str] = set()
    rest = iter(argv)
    for arg in rest:
        flag, sep, value = arg.partition("=")
        if flag in _SWITCHES and not sep:
            switches.add(_SWITCHES[flag])
            continue
        if flag not in _OPTIONS:
            raise InputError(f"unknown option {arg!r}" if arg.startswith("-") else f"unexpected argument {arg!r}")
        if not sep:
            following = next(rest, None)
            if following is None:
                raise InputError(f"{flag} needs a value")
            value = following
        setting = _OPTIONS[flag][0]
        if setting in _LISTS:
            values.setdefault(setting, []).extend(_split_list(value, flag))
        elif setting in values:
            raise InputError(f"{flag} is given twice")
        else:
            values[setting] = [(value, flag)]
    return values, switches


def _number(text: str, source: str, kind: type[int] | type[float]) -> float:
    try:
        number = kind(text)
    except ValueError:
        raise InputError(f"{source}: {text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{source}: {text!r} must be a finite number, not negative")
    return number


def parse_settings(argv: list[str], environ: dict[str, str]) -> Settings:
    given, switches = _collect(argv)
    for flag, (setting, variable) in _OPTIONS.items():
        if setting not in given and variable and environ.get(variable, "").strip():
            text = environ[variable].strip()
            given[setting] = _split_list(text, f"${variable}") if setting in _LISTS else [(text, f"${variable}")]

    def one(setting: str, default: str) -> str:
        return given[setting][0][0] if setting in given else default

    mtu = None
    if "mtu" in given:
        mtu = int(_number(*given["mtu"][0], kind=int))
    watch = _number(*given["watch"][0], kind=float) if "watch" in given else 0.0
    return Settings(
        pod_cidrs=tuple(given.get("pod_cidrs", ())), cluster_cidrs=tuple(given.get("cluster_cidrs", ())),
        node_name=one("node_name", ""), api_server=one("api_server", ""),
        service_account_dir=one("service_account_dir", DEFAULT_SERVICE_ACCOUNT_DIR),
        bin_dir=one("bin_dir", DEFAULT_BIN_DIR), conf_dir=one("conf_dir", DEFAULT_CONF_DIR),
        conf_name=one("conf_name", DEFAULT_CONF_NAME), network_name=one("network_name", DEFAULT_NETWORK_NAME),
        bridge=one("bridge", DEFAULT_BRIDGE), mtu=mtu, executable=one("executable", ""),
        executable_only="executable_only" in switches, watch=watch)


# --- CIDRs ----------------------------------------------------------------------------------

def _family(network: Network) -> str:
    return f"IPv{network.version}"


def parse_cidrs(items: tuple[tuple[str, str], ...], what: str) -> list[Network]:
    """Networks in the order given, at most one per family, no host bits set."""
    networks: list[Network] = []
    for text, source in items:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InputError(f"{source}: {text!r} is not a {what} (expected an address/prefix like "
                             f"10.244.1.0/24 or fd00:10:244:1::/64)") from None
        if "/" not in text:
            raise InputError(f"{source}: {text!r} is not a {what}: the /prefix is missing")
        if network.network_address != ipaddress.ip_interface(text).ip:
            raise InputError(f"{source}: {what} {text} has host bits set; the network is {network}")
        same = [n for n in networks if n.version == network.version]
        if same:
            raise InputError(f"{source}: two {_family(network)} {what}s ({same[0]} and {network}); "
                             f"give at most one per family")
        networks.append(network)
    return networks


def check_pod_cidrs(pods: list[Network], clusters: list[Network]) -> None:
    """Each pod CIDR inside the cluster CIDR of its family, with room for the gateway and a pod."""
    for pod in pods:
        room = 30 if pod.version == 4 else 126
        if pod.prefixlen > room:
            raise InputError(f"pod CIDR {pod} is too small: a gateway and at least one pod need a /{room} or larger")
        cluster = next((c for c in clusters if c.version == pod.version), None)
        if cluster is None:
            raise InputError(f"pod CIDR {pod} is {_family(pod)}, but no {_family(pod)} cluster CIDR was given "
                             f"(--cluster-cidr / $CLUSTER_CIDRS)")
        if not pod.subnet_of(cluster):  # type: ignore[arg-type]  # same family, checked above
            raise InputError(f"pod CIDR {pod} is not inside the cluster CIDR {cluster}: they must match "
                             f"kube-controller-manager's --cluster-cidr")


# --- the network list -----------------------------------------------------------------------

def network_list(settings: Settings, pods: list[Network], clusters: list[Network]) -> dict[str, Any]:
    plugin: dict[str, Any] = {
        "type": PLUGIN_NAME,
        "bridge": settings.bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": True,
        "ipMasqExclude": [str(c) for c in clusters],
        # A pod reaching a Service that kube-proxy sends back to the same pod comes back on its own port.
        "hairpinMode": True,
        "capabilities": {"portMappings": True},
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(pod), "gateway": str(pod.network_address + 1)}] for pod in pods],
            "dataDir": DEFAULT_IPAM_DATA_DIR,
        },
    }
    if settings.mtu is not None:
        plugin["mtu"] = settings.mtu
    return {"cniVersion": CNI_VERSION, "cniVersions": CNI_VERSIONS, "name": settings.network_name,
            "plugins": [plugin]}


def render(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def check_with_plugin(doc: dict[str, Any]) -> None:
    """The plugin's own config checks (schema and semantics) on the list it will be given."""
    plugin = {"cniVersion": doc["cniVersion"], "name": doc["name"], **doc["plugins"][0]}
    try:
        load_netconf(plugin, "ADD")
    except CniError as error:
        raise InputError(f"the network list would be rejected by {PLUGIN_NAME}: {error}") from None


def check_settings(settings: Settings) -> None:
    if not SAFE_NAME.fullmatch(settings.network_name):
        raise InputError(f"network name {settings.network_name!r}: letters, digits, '_', '.' and '-' only, "
                         f"starting with a letter or digit")
    if "/" in settings.conf_name or not settings.conf_name.endswith(".conflist") or settings.conf_name.startswith("."):
        raise InputError(f"--conf-name {settings.conf_name!r}: a file name ending in .conflist (runtimes load "
                         f"*.conflist as network lists)")


# --- files ----------------------------------------------------------------------------------

class _DirectoryLock:
    """flock(2) on the directory itself: installers on one host take turns, and no lock file
    is left in a directory runtimes read."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing releases the lock


def _remove_stale_temporaries(directory: str, prefix: str) -> None:
    """Temp names left by an installer that was killed; only called with the directory locked."""
    for entry in os.listdir(directory):
        if entry.startswith(prefix) and entry.endswith(".tmp"):
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def write_atomically(path: str, content: bytes) -> str:
    """'unchanged', 'written' (new) or 'replaced'. Readers see the old file or the new one."""
    try:
        with open(path, "rb") as handle:
            if handle.read() == content:
                return "unchanged"
        outcome = "replaced"
    except FileNotFoundError:
        outcome = "written"
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    with _DirectoryLock(directory) as dir_fd:
        _remove_stale_temporaries(directory, f".{name}.")
        temp = os.path.join(directory, f".{name}.tmp")
        _create_synced(temp, 0o644, (content,))
        os.rename(temp, path)
        os.fsync(dir_fd)
    return outcome


def configs_sorting_first(conf_dir: str, conf_name: str) -> list[str]:
    """Network config files that containerd and CRI-O would pick before ours."""
    try:
        entries = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    return [e for e in entries if e < conf_name and e.endswith((".conf", ".conflist", ".json"))
            and os.path.isfile(os.path.join(conf_dir, e))]


# --- the executable -------------------------------------------------------------------------

def running_executable(environ: dict[str, str]) -> str:
    """The single file this process was started as: the launcher says so for install-cni; a
    bundle run directly (as in the DaemonSet's image) looks beside its own directory."""
    started_as = environ.get(onefile.LAUNCHER_VARIABLE, "")
    if started_as:
        return os.path.abspath(started_as)
    if getattr(sys, "frozen", False):
        bundle_dir = os.path.dirname(os.path.realpath(sys.executable))
        beside = os.path.join(os.path.dirname(bundle_dir), PLUGIN_NAME)
        if onefile.read_header(beside) is not None:
            return beside
    raise InputError(f"not started as the {PLUGIN_NAME} single file: give --executable FILE (e.g. dist/{PLUGIN_NAME})")


def _old_bundle_of(link: str) -> str:
    """The bundle directory an older install's symlink points into ('' if it is no such symlink)."""
    head = os.readlink(link).split("/")[0]
    return head if head.startswith(OLD_BUNDLE_PREFIX) and head.endswith(OLD_BUNDLE_SUFFIX) else ""


def _installed(path: str) -> tuple[onefile.Header | None, str]:
    """What is installed at path: the header of our single file, or the bundle directory of an
    older install's symlink; refuses anything else: someone else's executable is never replaced."""
    if not os.path.lexists(path):
        return None, ""
    if os.path.islink(path):
        old_bundle = _old_bundle_of(path)
        if old_bundle:
            return None, old_bundle
    elif os.path.isfile(path):
        header = onefile.read_header(path)
        if header is not None:
            return header, ""
    raise InstallError(f"{path} exists and is not ours (not a {PLUGIN_NAME} single file); not touching it")


def _same_file_content(first: str, second: str) -> bool:
    if os.path.getsize(first) != os.path.getsize(second):
        return False
    with open(first, "rb") as a, open(second, "rb") as b:
        while True:
            chunk = a.read(COPY_CHUNK)
            if chunk != b.read(COPY_CHUNK):
                return False
            if not chunk:
                return True


def _create_synced(path: str, mode: int, chunks: Iterable[bytes]) -> None:
    """A new file (never an existing one) holding `chunks`, with `mode` whatever the umask,
    on disk before it gets its real name; removed again if anything fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _chunks_of(source: str) -> Iterator[bytes]:
    with open(source, "rb") as handle:
        while chunk := handle.read(COPY_CHUNK):
            yield chunk


def _copy_synced(source: str, destination: str) -> None:
    """A full copy, mode 0755: after a power cut the plugin is the old one or the new one, whole."""
    _create_synced(destination, 0o755, _chunks_of(source))


def _remove_old_bundles(bin_dir: str, keep: str) -> list[str]:
    removed = []
    for entry in sorted(os.listdir(bin_dir)):
        path = os.path.join(bin_dir, entry)
        if (entry.startswith(OLD_BUNDLE_PREFIX) and entry.endswith(OLD_BUNDLE_SUFFIX) and entry != keep
                and os.path.isdir(path) and not os.path.islink(path)):
            shutil.rmtree(path)
            removed.append(entry)
    return removed


def place_executable(source: str, bin_dir: str) -> str:
    """Put the single file `source` into bin_dir as the plugin; returns what was done, one line.

    A copy under a temp name, synced, renamed over the plugin's name; nothing when the same
    bytes are there already. Installers on one host take turns (a lock on bin_dir).
    """
    header = onefile.read_header(source)
    if header is None:
        raise InputError(f"{source} is not a {PLUGIN_NAME} single file (./build.sh builds one as dist/{PLUGIN_NAME})")
    target = os.path.join(bin_dir, PLUGIN_NAME)
    os.makedirs(bin_dir, exist_ok=True)
    with _DirectoryLock(bin_dir) as dir_fd:
        _remove_stale_temporaries(bin_dir, f".{PLUGIN_NAME}")
        current, old_bundle = _installed(target)
        if (current is not None and os.stat(target).st_mode & 0o777 == 0o755
                and _same_file_content(source, target)):
            return f"{target}: unchanged ({header.bundle_name})"
        temp = os.path.join(bin_dir, f".{PLUGIN_NAME}.tmp")
        _copy_synced(source, temp)
        os.rename(temp, target)
        # The symlink's bundle stays until the next upgrade: plugins started through the
        # symlink just before may still be loading files from it.
        removed = _remove_old_bundles(bin_dir, keep=old_bundle)
        os.fsync(dir_fd)
    done = f"{target}: installed {header.bundle_name}"
    if current is not None and current.bundle_name != header.bundle_name:
        done += f" (replaced {current.bundle_name})"
    elif old_bundle:
        done += f" (replaced the symlink into {old_bundle}, kept until the next upgrade)"
    return done + (f"; removed {', '.join(removed)}" if removed else "")


# --- the Node object ------------------------------------------------------------------------

def api_server_url(settings: Settings, environ: dict[str, str]) -> str:
    url = settings.api_server
    if not url:
        host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "")
        if not host or not port:
            raise InputError("no pod CIDR given (--pod-cidr / $POD_CIDRS) and no API server to read the Node "
                             "from (--api-server, or $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT)")
        url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    if not url.startswith("https://"):
        raise InputError(f"--api-server {url!r}: must be an https:// URL (the request carries a token)")
    return url.rstrip("/")


def _read_credentials(directory: str) -> tuple[str, str]:
    token_path, ca_path = os.path.join(directory, "token"), os.path.join(directory, "ca.crt")
    try:
        with open(token_path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise InstallError(f"cannot read the service account token {token_path}: {exc.strerror} "
                           f"(is a service account token mounted?)") from None
    if not os.path.isfile(ca_path):
        raise InstallError(f"the API server's CA {ca_path} does not exist")
    return token, ca_path


def _http_failure(status: int, node_name: str, url: str, body: bytes) -> InstallError:
    why = {
        401: "the service account token was not accepted",
        403: "the service account may not get nodes: it needs a ClusterRole with get on nodes "
             "(see deploy/cni-bridge.yaml)",
        404: f"there is no Node named {node_name!r}",
    }.get(status, "unexpected answer")
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    return InstallError(f"GET {url}: HTTP {status}: {why}" + (f" ({message})" if message else ""))


def fetch_node(api_server: str, node_name: str, service_account_dir: str) -> dict[str, Any]:
    """GET /api/v1/nodes/NAME with the pod's service account; TLS checked against its CA only."""
    token, ca_file = _read_credentials(service_account_dir)
    url = f"{api_server}/api/v1/nodes/{urllib.parse.quote(node_name, safe='')}"
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise InstallError(f"cannot load the API server's CA {ca_file}: {exc}") from None
    # No proxy: a pod's HTTPS_PROXY must not see the token, and the API server is in the cluster.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "application/json"})
    try:
        with opener.open(request, timeout=API_TIMEOUT_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_failure(exc.code, node_name, url, exc.read()) from None
    except urllib.error.URLError as exc:
        raise InstallError(f"GET {url}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, garbled answers
        raise InstallError(f"GET {url}: {exc}") from None
    try:
        node = json.loads(body)
    except ValueError:
        raise InstallError(f"GET {url}: the answer is not JSON") from None
    if not isinstance(node, dict):
        raise InstallError(f"GET {url}: the answer is not a Node object")
    return node


def node_pod_cidrs(node: dict[str, Any], node_name: str) -> tuple[tuple[str, str], ...]:
    spec = node.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        raise InstallError(f"Node {node_name}: spec.podCIDRs is not a list of strings")
    if not cidrs:
        raise InstallError(f"Node {node_name} has no spec.podCIDRs yet: kube-controller-manager assigns them "
                           f"when it runs with --allocate-node-cidrs and --cluster-cidr (or give --pod-cidr)")
    return tuple((c, f"Node {node_name} spec.podCIDRs") for c in cidrs)


def resolve_pod_cidrs(settings: Settings, environ: dict[str, str]) -> tuple[tuple[str, str], ...]:
    if settings.pod_cidrs:
        return settings.pod_cidrs
    if not settings.node_name:
        raise InputError("no pod CIDR: give --pod-cidr / $POD_CIDRS, or --node-name / $NODE_NAME to read "
                         "them from the Node object")
    url = api_server_url(settings, environ)
    return node_pod_cidrs(fetch_node(url, settings.node_name, settings.service_account_dir), settings.node_name)


# --- one run, and the loop ------------------------------------------------------------------

@record(frozen=True)
class Plan:
    """What a run installs, settled once: the executable to place, where, and the list to write."""
    executable: str
    bin_dir: str
    list_path: str  # "" with --executable-only
    list_content: bytes
    summary: str


def make_plan(settings: Settings, environ: dict[str, str]) -> Plan:
    executable = settings.executable or running_executable(environ)
    if settings.executable_only:
        return Plan(executable, settings.bin_dir, "", b"", "")
    check_settings(settings)
    clusters = parse_cidrs(settings.cluster_cidrs, "cluster CIDR")
    if not clusters:
        raise InputError("no cluster CIDR: give --cluster-cidr / $CLUSTER_CIDRS (kube-controller-manager's "
                         "--cluster-cidr), so traffic between pods is not masqueraded")
    pod_items = resolve_pod_cidrs(settings, environ)
    pods = parse_cidrs(pod_items, "pod CIDR")
    check_pod_cidrs(pods, clusters)
    doc = network_list(settings, pods, clusters)
    check_with_plugin(doc)
    summary = f"network {settings.network_name}, pod CIDRs {', '.join(map(str, pods))} from {pod_items[0][1]}"
    return Plan(executable, settings.bin_dir, os.path.join(settings.conf_dir, settings.conf_name), render(doc), summary)


def install(plan: Plan) -> list[str]:
    """One pass; returns what it did, one line per thing. Changes nothing when all is in place."""
    lines = [place_executable(plan.executable, plan.bin_dir)]
    if plan.list_path:
        outcome = write_atomically(plan.list_path, plan.list_content)
        lines.append(f"{plan.list_path}: {outcome}" + ("" if outcome == "unchanged" else f" ({plan.summary})"))
        conf_dir, conf_name = os.path.split(plan.list_path)
        for other in configs_sorting_first(conf_dir, conf_name):
            lines.append(f"warning: {os.path.join(conf_dir, other)} sorts before {conf_name}: containerd and "
                         f"CRI-O use the first network config in {conf_dir}, so pods would not get this one")
    return lines


def _say(line: str, stream: Any = None) -> None:
    out = stream if stream is not None else sys.stdout
    out.write(f"{PLUGIN_NAME} install-cni: {line}\n")
    out.flush()


def _report(lines: list[str], quiet_when_unchanged: bool) -> None:
    changed = [line for line in lines if ": unchanged" not in line]
    if quiet_when_unchanged and not changed:
        return
    for line in lines:
        _say(line, sys.stderr if line.startswith("warning:") else None)
    if not changed:
        _say("nothing changed")


def _install_and_report(plan: Plan, quiet: bool) -> None:
    try:
        _report(install(plan), quiet)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise InstallError(f"{exc.strerror or exc}{where}") from None


def _watch(settings: Settings, environ: dict[str, str], plan: Plan | None, delay: float) -> int:
    """Check again every settings.watch seconds (a failure sooner). SIGTERM and SIGINT stay
    blocked and are only taken while waiting, so a pass is never cut off halfway (and PID 1 of
    a container, which the kernel gives no default signal action, still ends on SIGTERM)."""
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    retry = min(RETRY_SECONDS, settings.watch)
    while signal.sigtimedwait(stop, delay) is None:
        try:
            if plan is None:  # the pod CIDRs are looked up until found, then never again
                plan = make_plan(settings, environ)
            _install_and_report(plan, quiet=True)
            delay = settings.watch
        except InstallError as error:
            _say(f"{error}; trying again in {retry:g} s", sys.stderr)
            delay = retry
    _say("stopped by a signal")
    return 0


def run(argv: list[str], environ: dict[str, str]) -> int:
    if any(arg in ("-h", "--help") for arg in argv):
        sys.stdout.write(HELP)
        return 0
    try:
        settings = parse_settings(argv, environ)
        plan = None
        try:
            plan = make_plan(settings, environ)
            _install_and_report(plan, quiet=False)
            delay = settings.watch
        except InstallError as error:
            if not settings.watch:
                raise
            delay = min(RETRY_SECONDS, settings.watch)
            _say(f"{error}; trying again in {delay:g} s", sys.stderr)
        return _watch(settings, environ, plan, delay) if settings.watch else 0
    except InputError as error:
        _say(str(error), sys.stderr)
        sys.stderr.write(f"run '{PLUGIN_NAME} install-cni --help' for usage\n")
        return USAGE_ERROR
    except InstallError as error:
        _say(str(error), sys.stderr)
        return 1
