"""read_invocation: the CNI_* variables each command needs, and the value rules (code 4).

Reference §1.2: ADD/CHECK need CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME; DEL needs
CNI_CONTAINERID, CNI_IFNAME; GC needs CNI_PATH; STATUS and VERSION need nothing.
Values are validated only when the command requires the variable.
"""

from __future__ import annotations

import pytest

from cni_bridge.environment import read_invocation, validate_container_id, validate_ifname
from cni_bridge.errors import INVALID_ENVIRONMENT, CniError

pytestmark = pytest.mark.unit

FULL = {
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/var/run/netns/cbt-does-not-exist",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
ALL_VARS = tuple(FULL)


def env_for(command: str, **overrides: str | None) -> dict[str, str]:
    env = {"CNI_COMMAND": command, **FULL}
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def env_error(env: dict[str, str]) -> CniError:
    with pytest.raises(CniError) as info:
        read_invocation(env)
    assert info.value.code == INVALID_ENVIRONMENT == 4
    return info.value


# ----------------------------------------------------------------- required variables

@pytest.mark.parametrize("command", list(REQUIRED))
def test_full_environment_is_accepted(command: str) -> None:
    inv = read_invocation(env_for(command))
    assert inv.command == command
    assert inv.path == ("/opt/cni/bin", "/usr/lib/cni")


MISSING_CASES = [(cmd, var) for cmd, names in REQUIRED.items() for var in names]


@pytest.mark.parametrize(("command", "var"), MISSING_CASES, ids=[f"{c}-{v}" for c, v in MISSING_CASES])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_each_required_variable_missing(command: str, var: str, how: str) -> None:
    env = env_for(command, **{var: None if how == "unset" else ""})
    error = env_error(env)
    assert var in error.msg
    # Only the missing one is named as missing.
    named = error.msg.split(":", 1)[1]
    for other in REQUIRED[command]:
        if other != var:
            assert other not in named


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL", "GC"])
def test_all_required_missing_are_listed_together(command: str) -> None:
    error = env_error({"CNI_COMMAND": command})
    for var in REQUIRED[command]:
        assert var in error.msg


OPTIONAL_CASES = [(cmd, var) for cmd, names in REQUIRED.items() for var in ALL_VARS if var not in names]


@pytest.mark.parametrize(("command", "var"), OPTIONAL_CASES, ids=[f"{c}-{v}" for c, v in OPTIONAL_CASES])
def test_optional_variables_may_be_absent(command: str, var: str) -> None:
    inv = read_invocation(env_for(command, **{var: None}))
    assert inv.command == command


@pytest.mark.parametrize("command", ["STATUS", "VERSION"])
def test_status_and_version_need_nothing(command: str) -> None:
    inv = read_invocation({"CNI_COMMAND": command})
    assert (inv.container_id, inv.netns, inv.ifname, inv.args, inv.path) == ("", "", "", "", ())


def test_gc_needs_only_cni_path() -> None:
    inv = read_invocation({"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"})
    assert inv.path == ("/opt/cni/bin",)


def test_del_without_netns() -> None:
    inv = read_invocation(env_for("DEL", CNI_NETNS=None))
    assert inv.netns == ""


@pytest.mark.parametrize("command", ["STATUS", "GC", "VERSION"])
def test_values_not_required_are_not_validated(command: str) -> None:
    # The reference validates a value only when its command requires the variable.
    read_invocation(env_for(command, CNI_CONTAINERID="bad/id", CNI_IFNAME="bad/if"))


def test_del_does_not_validate_unrequired_netns() -> None:
    read_invocation(env_for("DEL", CNI_NETNS="not a path"))


def test_cni_args_and_path_are_carried() -> None:
    inv = read_invocation(env_for("ADD", CNI_ARGS="IgnoreUnknown=1;IP=10.0.0.5", CNI_PATH="::/a::/b:"))
    assert inv.args == "IgnoreUnknown=1;IP=10.0.0.5"
    assert inv.path == ("/a", "/b")


# ----------------------------------------------------------------- command

@pytest.mark.parametrize("command", ["FOO", "add", "Add", "DELETE", "ADD ", " ADD", "VERSION\n", ""])
def test_unknown_command(command: str) -> None:
    error = env_error(env_for(command))
    assert "CNI_COMMAND" in error.msg


def test_unknown_command_is_named() -> None:
    assert "FOO" in env_error(env_for("FOO")).msg


def test_missing_command() -> None:
    assert "CNI_COMMAND" in env_error(dict(FULL)).msg


# ----------------------------------------------------------------- container ID

GOOD_IDS = ["a", "0", "ctr-1", "A_b.c-d", "0123456789abcdef" * 4, "x" * 500, "a.", "a-", "a_"]
BAD_IDS = ["-abc", ".abc", "_abc", "a/b", "../x", "a b", "a\tb", "a\nb", "a:b", "a;b", "a$b", "é", "aé", "a\x00b",
           "abc\n", "\nabc", "a\u00a0b", "a\udcffb"]


@pytest.mark.parametrize("container_id", GOOD_IDS)
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_valid_container_ids(command: str, container_id: str) -> None:
    assert read_invocation(env_for(command, CNI_CONTAINERID=container_id)).container_id == container_id


@pytest.mark.parametrize("container_id", BAD_IDS, ids=[repr(i) for i in BAD_IDS])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_invalid_container_ids(command: str, container_id: str) -> None:
    error = env_error(env_for(command, CNI_CONTAINERID=container_id))
    assert "CNI_CONTAINERID" in error.msg


def test_container_id_validator_directly() -> None:
    validate_container_id("abc")
    with pytest.raises(CniError):
        validate_container_id("")


# ----------------------------------------------------------------- interface name

GOOD_IFNAMES = ["eth0", "e", "net1.100", "a-b_c", "x" * 15, "é" * 7, "eth0é", "...", ".a", "a..", "@if3",
                "éééééééa"]  # 7 x 2 + 1 = 15 bytes
BAD_IFNAMES = [
    ("empty", ""),
    ("16-ascii", "x" * 16),
    ("8-two-byte-chars", "é" * 8),
    ("multibyte-16-bytes", "eth0" + "€" * 4),  # 4 + 12 = 16 bytes, 8 characters
    ("emoji", "eth0😀😀😀"),  # 4 + 12 = 16 bytes
    ("dot", "."),
    ("dotdot", ".."),
    ("slash", "eth0/1"),
    ("slash-only", "/"),
    ("colon", "eth0:1"),
    ("space", "eth 0"),
    ("leading-space", " eth0"),
    ("tab", "eth\t0"),
    ("newline", "eth0\n"),
    ("cr", "eth\r0"),
    ("vtab", "eth\x0b0"),
    ("formfeed", "eth\x0c0"),
    ("nbsp", "eth\u00a00"),
    ("nel", "eth\u00850"),
    ("em-space", "eth\u20030"),
    ("ideographic-space", "eth\u30000"),
    ("line-separator", "eth\u20280"),
]


@pytest.mark.parametrize("ifname", GOOD_IFNAMES)
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_valid_ifnames(command: str, ifname: str) -> None:
    assert len(ifname.encode()) <= 15
    assert read_invocation(env_for(command, CNI_IFNAME=ifname)).ifname == ifname


@pytest.mark.parametrize("ifname", [c[1] for c in BAD_IFNAMES], ids=[c[0] for c in BAD_IFNAMES])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_invalid_ifnames(command: str, ifname: str) -> None:
    error = env_error(env_for(command, CNI_IFNAME=ifname))
    assert "CNI_IFNAME" in error.msg


@pytest.mark.parametrize("ifname", [c[1] for c in BAD_IFNAMES if c[1]], ids=[c[0] for c in BAD_IFNAMES if c[1]])
def test_ifname_validator_directly(ifname: str) -> None:
    with pytest.raises(CniError) as info:
        validate_ifname(ifname)
    assert info.value.code == INVALID_ENVIRONMENT
    assert info.value.msg.startswith("CNI_IFNAME:")


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("ifname", ["eth\udcff", "\udcc3\udca9" * 8], ids=["short", "16-raw-bytes"])
def test_non_utf8_ifname_is_an_error_not_a_crash(command: str, ifname: str) -> None:
    """os.environ holds a raw non-UTF-8 byte as a lone surrogate (surrogateescape).

    Whatever the plugin decides about such a name, it must answer with a CNI error (code 4),
    never with an uncaught UnicodeEncodeError.
    """
    error = env_error(env_for(command, CNI_IFNAME=ifname))
    assert "CNI_IFNAME" in error.msg


def test_too_long_message() -> None:
    error = env_error(env_for("ADD", CNI_IFNAME="é" * 8))
    assert "too long" in error.msg


def test_required_checked_before_values() -> None:
    # A bad container ID with a missing ifname: the missing variable is what is reported.
    error = env_error(env_for("ADD", CNI_CONTAINERID="a/b", CNI_IFNAME=None))
    assert "CNI_IFNAME" in error.msg
