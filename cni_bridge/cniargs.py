"""CNI_ARGS: the deprecated `K=V;K=V` channel that kubelet and cnitool still use."""

from __future__ import annotations

from .records import record

from .errors import INVALID_ENVIRONMENT, CniError

# Keys this plugin understands; kubelet always sends the K8S_POD_* ones with IgnoreUnknown=1.
KNOWN_KEYS = frozenset({
    "IP", "MAC", "IgnoreUnknown",
    "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID",
})


@record(frozen=True)
class CniArgs:
    ips: tuple[str, ...] = ()
    mac: str = ""
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""


def parse_cni_args(raw: str) -> CniArgs:
    """As libcni's LoadArgs reads them: every `;`-separated item is one KEY=VALUE."""
    pairs: dict[str, str] = {}
    for item in raw.split(";") if raw else ():
        parts = item.split("=")
        if len(parts) != 2:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {item!r}", "expected KEY=VALUE")
        pairs[parts[0]] = parts[1]
    ignore = pairs.get("IgnoreUnknown", "false").lower()
    if ignore not in ("1", "true", "0", "false"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: IgnoreUnknown={pairs['IgnoreUnknown']!r} is not a boolean",
                       "use 1, true, 0 or false")
    unknown = [f"{k}={v}" for k, v in pairs.items() if k not in KNOWN_KEYS]
    if unknown and ignore not in ("1", "true"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: unknown args {unknown}",
                       "keys are case-sensitive; add IgnoreUnknown=1 to pass other keys")
    return CniArgs(
        ips=tuple(ip for ip in pairs.get("IP", "").split(",") if ip),
        mac=pairs.get("MAC", ""),
        pod_namespace=pairs.get("K8S_POD_NAMESPACE", ""),
        pod_name=pairs.get("K8S_POD_NAME", ""),
        pod_uid=pairs.get("K8S_POD_UID", ""),
    )
