"""The one interface-name check, and the three places that rely on it.

Which of these names the kernel itself refuses is checked against the kernel in
tests/integration/test_netlink.py (test_kernel_agrees_with_interface_name_problem).
"""

from __future__ import annotations

import pytest

from cni_bridge.config.model import build_netconf
from cni_bridge.environment import validate_ifname
from cni_bridge.errors import INVALID_CONFIG, INVALID_ENVIRONMENT, SYSCTL_FAILURE, CniError
from cni_bridge.network import sysctl
from cni_bridge.network.naming import interface_name_problem

GOOD = ["eth0", "e", "net1.100", "a-b_c", "x" * 15, "é" * 7, "éééééééa", "...", ".a", "a..", "@if3", "br-0_x.y",
        "veth0123456789a", "Ωmega", "日本"]

# (name, a word the problem must contain)
BAD = [
    ("", "empty"),
    ("x" * 16, "16 bytes"),
    ("é" * 8, "16 bytes"),
    ("eth0" + "€" * 4, "16 bytes"),
    (".", ". or .."),
    ("..", ". or .."),
    ("eth0/1", "'/'"),
    ("eth0:1", "':'"),
    ("eth 0", "whitespace"),
    ("eth\t0", "whitespace"),
    ("eth0\n", "whitespace"),
    ("eth\u00a00", "whitespace"),
    ("eth\u20030", "whitespace"),
    ("eth\u30000", "whitespace"),
    ("à", "0xa0"),  # c3 a0: the kernel's isspace() sees the second byte as a no-break space
    ("a\u0800", "0xa0"),  # e0 a0 80: the byte in the middle
    ("eth%d", "template"),
    ("x%y", "template"),
    ('br"0', "firewall"),
    ("br'0", "firewall"),
    ("br\\0", "firewall"),
    ("a\x00b", "unprintable"),
    ("a\x01b", "unprintable"),
    ("a\x7fb", "unprintable"),
    ("a\u200bb", "unprintable"),  # zero-width space: a format character
    ("eth\udcff", "UTF-8"),  # an undecodable byte from os.environ
]


@pytest.mark.parametrize("name", GOOD)
def test_good_names(name: str) -> None:
    assert interface_name_problem(name) is None


@pytest.mark.parametrize(("name", "word"), BAD, ids=[repr(n) for n, _ in BAD])
def test_bad_names(name: str, word: str) -> None:
    problem = interface_name_problem(name)
    assert problem is not None and word in problem


@pytest.mark.parametrize(("name", "word"), [b for b in BAD if b[1] != "UTF-8"], ids=[repr(n) for n, w in BAD if w != "UTF-8"])
def test_every_user_refuses_what_it_refuses(name: str, word: str) -> None:
    with pytest.raises(CniError) as env:
        validate_ifname(name)
    assert env.value.code == INVALID_ENVIRONMENT and word in env.value.msg
    if name:  # an empty bridge name means the default bridge
        with pytest.raises(CniError) as conf:
            build_netconf({"cniVersion": "1.0.0", "name": "n", "type": "cni-bridge", "bridge": name}, "1.0.0")
        assert conf.value.code == INVALID_CONFIG and conf.value.msg.startswith("bridge: ") and word in conf.value.msg
    with pytest.raises(CniError) as key:
        sysctl.resolve(("net/ipv6/conf/{}/accept_ra", name))
    assert key.value.code == SYSCTL_FAILURE and word in key.value.msg


@pytest.mark.parametrize("name", GOOD)
def test_every_user_accepts_what_it_accepts(name: str) -> None:
    validate_ifname(name)
    doc = {"cniVersion": "1.0.0", "name": "n", "type": "cni-bridge", "bridge": name}
    assert build_netconf(doc, "1.0.0").bridge == name
    assert sysctl.resolve(("net/ipv6/conf/{}/accept_ra", name)) == f"/proc/sys/net/ipv6/conf/{name}/accept_ra"
