"""One typed request: the environment, the config and CNI_ARGS, merged with the spec's precedence."""

from __future__ import annotations

from .records import record

from .cniargs import CniArgs, parse_cni_args
from .config.model import NetConf, canonical_mac
from .environment import Invocation
from .errors import INVALID_ENVIRONMENT, CniError
from .log import Log


@record(frozen=True)
class Request:
    invocation: Invocation
    conf: NetConf
    cni_args: CniArgs

    @property
    def requested_ips(self) -> tuple[str, ...]:
        """CONVENTIONS.md: runtimeConfig wins over args, args over CNI_ARGS; the sources are not merged."""
        return self.conf.runtime_ips or self.conf.args_ips or self.cni_args.ips

    @property
    def mac(self) -> str:
        return self.conf.runtime_mac or self.conf.args_mac or self.cni_args.mac

    @property
    def attachment(self) -> tuple[str, str]:
        return (self.invocation.container_id, self.invocation.ifname)


def build_request(invocation: Invocation, conf: NetConf) -> Request:
    cni_args = parse_cni_args(invocation.args)
    return Request(invocation=invocation, conf=conf, cni_args=_checked(cni_args))


def build_delete_request(invocation: Invocation, conf: NetConf, log: Log) -> Request:
    """DEL needs no address or MAC from CNI_ARGS: unreadable ones are logged, not fatal."""
    try:
        return build_request(invocation, conf)
    except CniError as exc:
        log.warning(f"CNI_ARGS ignored: {exc}")
        return Request(invocation=invocation, conf=conf, cni_args=CniArgs())


def _checked(cni_args: CniArgs) -> CniArgs:
    import ipaddress
    clean_ips = []
    for ip in cni_args.ips:
        try:
            clean_ips.append(str(ipaddress.ip_interface(ip).ip if "/" in ip else ipaddress.ip_address(ip)))
        except ValueError:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: IP={ip!r} is not a valid IP address") from None
    mac = canonical_mac(cni_args.mac) if cni_args.mac else ""
    if mac is None:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: MAC={cni_args.mac!r} is not a valid MAC address")
    return CniArgs(ips=tuple(clean_ips), mac=mac, pod_namespace=cni_args.pod_namespace,
                   pod_name=cni_args.pod_name, pod_uid=cni_args.pod_uid)
