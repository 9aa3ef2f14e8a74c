"""Kubernetes' path through containerd 1.6 (Debian 12): its CRI plugin, driven like a kubelet
by a small gRPC client of our own, with a CNI network list of the test. Used by
tests/integration/test_cri.py and tests/cri_bench.py.

The client speaks the CRI ``runtime.v1`` API: tests/cri_api.proto is the subset of
k8s.io/cri-api's ``pkg/apis/runtime/v1/api.proto`` these tests need (real field numbers),
compiled with grpcio-tools' protoc into a temp dir the first time it is needed in a process
(nothing generated is kept in the tree). Calls go through plain ``grpc`` channels with the
method paths ``/runtime.v1.RuntimeService/<Method>``.

containerd runs as tests/containerd_harness.py runs it (node network namespace, private
mount namespace, temp root, state and socket) with the CRI plugin enabled. What its config
needs on these machines (each found by running it here):

- ``sandbox_image``: no registry is reachable, so the pod sandbox ("pause") image is built
  from Debian's busybox-static (tests/rootfs.py, tests/oci_image.py; its command is a sleep
  loop) and imported with ``ctr -n k8s.io images import`` once the daemon runs. Its name
  must be fully qualified (``localhost/...``): a short name becomes docker.io/library/...
  and the CRI plugin would try to pull it. Pod containers run from the same image.
- ``restrict_oom_score_adj = true``: the sandbox asks for oom_score_adj -998, which needs
  CAP_SYS_RESOURCE (not granted here); without it runc fails with "can't get final child's
  PID from pipe: EOF".
- ``disable_apparmor = true``; runc as ``io.containerd.runc.v2`` with
  ``BinaryName = "/usr/sbin/runc"``.
- CNI: ``bin_dir`` and ``conf_dir`` in the temp root (the symlink ``cni-bridge`` ->
  ``$CNI_BRIDGE_BIN`` plus links to Debian's reference plugins), ``max_conf_num = 1``.
  ``netns_mounts_under_state_dir = true`` keeps the pods' network namespace mounts under the
  temp state dir (not /run/netns, which ``ip netns`` on the host would list).
- The CRI plugin's libcni caches results in /var/lib/cni/results, with no setting: in
  containerd's mount namespace /var/lib/cni is the temp root's ``cni-cache`` (an overlay of
  /var/lib, like ctr gets in the ``ctr run --cni`` tests).
- Pods get ``cgroup_parent`` ``/cbt-cri-<hex>`` (their containers inherit it), so the
  clean-up finds and removes every cgroup they made; the CRI plugin uses containerd
  namespace ``k8s.io``, which lives only in the temp root's metadata.

What the CRI plugin sends the network list (see /work/shared/notes/machine.md): ``loopback``
runs in parallel with the list's ADD; ``CNI_ARGS`` carries ``IgnoreUnknown=1`` and
``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``, ``K8S_POD_INFRA_CONTAINER_ID``, ``K8S_POD_UID``;
the CNI container ID is the sandbox ID; capability arguments come with Go's field names
(``HostPort``, ``ContainerPort``, ``Protocol``, ``HostIP``; ``IngressRate``...). Teardown
sends DEL twice: ``StopPodSandbox`` with ``CNI_NETNS`` and ``prevResult``, then
``RemovePodSandbox`` with an empty ``CNI_NETNS`` and no ``prevResult``.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from tests.containerd_harness import CACHE_DIR, RUNC, TIMEOUT, ContainerdDaemon
from tests.containerd_harness import skip_reason as containerd_skip_reason
from tests.plugin import PATH, REF_DIR, REPO, Node, token
from tests.rootfs import make_busybox_rootfs

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri_api.proto")
SERVICE = "runtime.v1.RuntimeService"
CRI_NAMESPACE = "k8s.io"  # the containerd namespace of the CRI plugin, fixed
INDEX = "hello from the container"  # tests/rootfs.py's www/index.html
# The pod sandbox's process: sleeps until killed; exits at once on SIGTERM (PID 1 ignores
# signals it has no handler for).
PAUSE_COMMAND = ("/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done")
WEB_COMMAND = ("/bin/httpd", "-f", "-p", "80", "-h", "/www")
# busybox-static 1.35's wget crashes (SIGSEGV) with its own -T timeout: busybox timeout instead.
WGET = ("/bin/busybox", "timeout", "5", "wget", "-q", "-O", "-")
REF_PLUGINS = ("bridge", "host-local", "portmap", "bandwidth", "loopback")


def skip_reason() -> str | None:
    """Why the CRI tests cannot run here (None if they can)."""
    reason = containerd_skip_reason()
    if reason is not None:
        return reason
    for module in ("grpc", "grpc_tools", "google.protobuf"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"python module {module} is missing (the test extra: pip install -e '.[test]')"
    missing = [p for p in REF_PLUGINS if not os.access(os.path.join(REF_DIR, p), os.X_OK)]
    if missing:
        return f"reference plugins {missing} missing in {REF_DIR} (Debian package containernetworking-plugins)"
    if shutil.which("curl", path=PATH) is None:
        return "curl is not installed"
    return None


# --- the CRI API --------------------------------------------------------------------------------

@functools.cache
def cri_api() -> ModuleType:
    """tests/cri_api.proto compiled (protoc of grpcio-tools) and loaded; once per process,
    since protobuf refuses to register the same file twice."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out = tempfile.mkdtemp(prefix="cbt-cri-api-")
    atexit.register(shutil.rmtree, out, True)
    directory, name = os.path.split(PROTO)
    rc = protoc.main(["protoc", f"--proto_path={directory}", f"--python_out={out}", name])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {PROTO}")
    module_name = name.removesuffix(".proto") + "_pb2"
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(out, module_name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CriClient:
    """Unary calls of the CRI RuntimeService over containerd's socket."""

    def __init__(self, socket: str) -> None:
        import grpc

        self.api = cri_api()
        self._service = self.api.DESCRIPTOR.services_by_name["RuntimeService"]
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self._stubs: dict[str, tuple[Callable[..., Any], Any]] = {}

    def call(self, method: str, deadline: float = TIMEOUT, **fields: Any) -> Any:
        """``method`` with a request made of ``fields``; returns the response message."""
        if method not in self._stubs:
            descriptor = self._service.methods_by_name[method]
            request_class = getattr(self.api, descriptor.input_type.name)
            response_class = getattr(self.api, descriptor.output_type.name)
            self._stubs[method] = (self.channel.unary_unary(
                f"/{SERVICE}/{method}", request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString), request_class)
        stub, request_class = self._stubs[method]
        return stub(request_class(**fields), timeout=deadline)

    def close(self) -> None:
        self.channel.close()


# --- the network list ---------------------------------------------------------------------------

V4, V6 = "10.248.0.0/24", "fd00:248::/64"


@dataclass
class CniNetwork:
    """A network list of the test, with the directories its plugins write to."""

    name: str
    bridge: str
    data_dir: str
    state_dir: str
    log_file: str
    conflist: dict[str, Any]
    v4: str = V4
    v6: str = V6


def cni_bridge_network(node: Node, chained: Sequence[dict[str, Any]] = (), v4: str = V4,  # noqa: F811
                       v6: str = V6, firewall_backend: str = "") -> CniNetwork:
    """The shipped conf/10-cni-bridge.conflist (cniVersion, cniVersions, ipMasq, hairpin,
    capabilities) on test-owned names, subnets and directories, then ``chained`` plugins;
    ``firewall_backend`` sets the plugin's firewallBackend."""
    tok = token(4)
    net = CniNetwork(name=f"cbt-cri-{tok}", bridge=f"cbtcr{tok}", data_dir=node.data_dir(),
                     state_dir=node.temp_dir(), log_file=os.path.join(node.temp_dir(), "cni-bridge.log"),
                     conflist={}, v4=v4, v6=v6)
    with open(os.path.join(REPO, "conf", "10-cni-bridge.conflist"), encoding="utf-8") as handle:
        conflist: dict[str, Any] = json.load(handle)
    plugin = conflist["plugins"][0]
    assert plugin["type"] == "cni-bridge" and plugin["ipMasq"] and plugin["capabilities"]["portMappings"], plugin
    conflist["name"] = net.name
    plugin.update(bridge=net.bridge, stateDir=net.state_dir, logFile=net.log_file, logLevel="info",
                  ipam={"type": "host-local", "dataDir": net.data_dir, "ranges": [[{"subnet": v4}], [{"subnet": v6}]]})
    if firewall_backend:
        plugin["firewallBackend"] = firewall_backend
    conflist["plugins"] += [dict(p) for p in chained]
    net.conflist = conflist
    return net


def reference_network(node: Node, v4: str = V4, v6: str = V6) -> CniNetwork:  # noqa: F811
    """What the shipped list replaces: Debian's reference bridge + host-local + portmap with the
    same settings (gateway, default routes, masquerade, hairpin, dual stack, published ports)."""
    tok = token(4)
    net = CniNetwork(name=f"cbt-ref-{tok}", bridge=f"cbtrf{tok}", data_dir=node.data_dir(), state_dir="",
                     log_file="", conflist={}, v4=v4, v6=v6)
    net.conflist = {
        "cniVersion": "1.0.0",
        "name": net.name,
        "plugins": [
            {"type": "bridge", "bridge": net.bridge, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": net.data_dir, "ranges": [[{"subnet": v4}], [{"subnet": v6}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return net


# --- containerd with its CRI plugin -----------------------------------------------------------------

@dataclass
class Pod:
    """A pod sandbox the test ran, and the config it was run with (containers need it)."""

    name: str
    id: str
    config: Any
    containers: list[str] = field(default_factory=list)


class CriContainerd(ContainerdDaemon):
    """containerd with the CRI plugin on one network list, a pause image, and the client."""

    def __init__(self, node: Node) -> None:  # noqa: F811
        super().__init__(node, namespace=CRI_NAMESPACE, cgroup_parent=f"cbt-cri-{token(4)}")
        self.image = f"localhost/cbt-pause-{token(4)}:{token(3)}"
        self.network: CniNetwork | None = None
        self.client: CriClient | None = None
        self.pods: list[Pod] = []

    @property
    def cri(self) -> CriClient:
        assert self.client is not None, "containerd is not started"
        return self.client

    # --- start ----------------------------------------------------------------------------------

    def disabled_plugins(self) -> tuple[str, ...]:
        return tuple(p for p in super().disabled_plugins() if p != "io.containerd.grpc.v1.cri")

    def extra_config(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""
[{cri}]
  sandbox_image = "{self.image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
[{cri}.cni]
  bin_dir = "{self.bin_dir}"
  conf_dir = "{self.conf_dir}"
  max_conf_num = 1
"""

    def daemon_redirects(self) -> list[tuple[str, str, str]]:
        return [*super().daemon_redirects(), (CACHE_DIR, self.cache_dir, "/var/lib")]

    def answers(self) -> bool:
        """The CRI service answers ``Version`` (it registers after containerd's own API)."""
        import grpc

        if self.client is None:
            self.client = CriClient(self.socket)
        try:
            self.client.call("Version", deadline=2, version="v1")
        except grpc.RpcError:
            return False
        return True

    def start_with(self, network: CniNetwork) -> None:
        """Write the network list (the only one: the CRI plugin reads it at start), start the
        daemon, import the pause image."""
        self.network = network
        self.tokens += (network.name,)
        with open(os.path.join(self.conf_dir, f"10-{network.name}.conflist"), "w", encoding="utf-8") as handle:
            json.dump(network.conflist, handle, indent=1)
        self.start()
        rootfs = make_busybox_rootfs(os.path.join(self.root, "rootfs"))
        self.import_image(rootfs, self.image, cmd=PAUSE_COMMAND)

    # --- pods -----------------------------------------------------------------------------------

    def pod_config(self, name: str, ports: Sequence[tuple[int, int]] = (),
                   annotations: dict[str, str] | None = None) -> Any:
        """A PodSandboxConfig as a kubelet makes it: metadata, hostname, (hostPort,
        containerPort) TCP mappings, annotations, our cgroup parent."""
        api = self.cri.api
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=f"uid-{token(8)}", namespace="cbt", attempt=0),
            hostname=name,
            port_mappings=[api.PortMapping(protocol=api.TCP, container_port=c, host_port=h) for h, c in ports],
            labels={"cbt": "1"},
            annotations=annotations or {},
            linux=api.LinuxPodSandboxConfig(cgroup_parent=f"/{self.cgroup_parent}"))

    def run_pod(self, name: str, ports: Sequence[tuple[int, int]] = (),
                annotations: dict[str, str] | None = None) -> Pod:
        config = self.pod_config(name, ports, annotations)
        pod_id = self.cri.call("RunPodSandbox", config=config).pod_sandbox_id
        pod = Pod(name, pod_id, config)
        self.pods.append(pod)
        return pod

    def pod_ips(self, pod: Pod) -> tuple[str, list[str]]:
        """(network.ip, network.additional_ips) of PodSandboxStatus."""
        status = self.cri.call("PodSandboxStatus", pod_sandbox_id=pod.id).status
        assert status.state == self.cri.api.SANDBOX_READY, f"pod {pod.name} is not ready: {status}"
        return status.network.ip, [extra.ip for extra in status.network.additional_ips]

    def start_container(self, pod: Pod, name: str, command: Sequence[str]) -> str:
        api = self.cri.api
        config = api.ContainerConfig(metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=self.image),
                                     command=list(command))
        container_id = self.cri.call("CreateContainer", pod_sandbox_id=pod.id, config=config,
                                     sandbox_config=pod.config).container_id
        pod.containers.append(container_id)
        self.cri.call("StartContainer", container_id=container_id)
        return str(container_id)

    def exec(self, container_id: str, *command: str, timeout: int = 10) -> tuple[int, str]:
        """ExecSync: (exit code, stdout + stderr)."""
        reply = self.cri.call("ExecSync", deadline=timeout + 30, container_id=container_id, cmd=list(command),
                              timeout=timeout)
        return int(reply.exit_code), (reply.stdout + reply.stderr).decode(errors="replace")

    def stop_pod(self, pod: Pod) -> None:
        self.cri.call("StopPodSandbox", pod_sandbox_id=pod.id)

    def remove_pod(self, pod: Pod) -> None:
        self.cri.call("RemovePodSandbox", pod_sandbox_id=pod.id)
        self.pods.remove(pod)

    def listed_pods(self) -> list[str]:
        return [item.id for item in self.cri.call("ListPodSandbox").items]

    def cache_file(self, pod_id: str) -> str:
        """Where the CRI plugin's libcni caches a pod's result (containerd's /var/lib/cni)."""
        assert self.network is not None
        return os.path.join(self.cache_dir, "results", f"{self.network.name}-{pod_id}-eth0")

    # --- clean-up -------------------------------------------------------------------------------

    def cleanup_steps(self) -> list[Callable[[], list[str]]]:
        return [self._remove_pods, *super().cleanup_steps(), self._close_client]

    def _remove_pods(self) -> list[str]:
        """Every pod the CRI plugin still knows: stopped (DEL with the netns) and removed
        (DEL without); a failure is a finding (a pod whose DEL fails cannot be removed)."""
        if not self.running() or self.client is None:
            return []
        import grpc

        problems = []
        try:
            pods = self.listed_pods()
        except grpc.RpcError as exc:
            return [f"ListPodSandbox failed: {exc}"]
        for pod_id in pods:
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                try:
                    self.cri.call(method, deadline=30, pod_sandbox_id=pod_id)
                except grpc.RpcError as exc:
                    problems.append(f"{method} {pod_id} failed in the clean-up: {exc}")
        return problems

    def _close_client(self) -> list[str]:
        if self.client is not None:
            self.client.close()
        return []


# --- reaching pods ------------------------------------------------------------------------------

def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def http_get(ns: str, host: str, port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """curl http://host:port/ from namespace ``ns``: (got the pods' index page, what curl said)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "-g", "--noproxy", "*", "--max-time",
                           str(timeout), url(host, port)], capture_output=True, text=True, env={"PATH": PATH},
                          timeout=timeout + 30, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == INDEX, (proc.stdout + proc.stderr).strip()


