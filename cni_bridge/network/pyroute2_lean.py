"""Load pyroute2's netlink message classes without running ``pyroute2/__init__.py``.

The package's ``__init__`` eagerly imports NDB (sqlite3), IPDB, asyncio, ssl, the
netns helpers and more: about 220 ms, several times the plugin's whole budget. The
message classes themselves only need ``pyroute2.netlink``, ``pyroute2.common`` and
``pyroute2.config``. Python always runs a package's ``__init__`` before a submodule,
unless the package is already in ``sys.modules``; so we put a bare module object
there whose ``__path__`` is the real package directory, and the submodules import
normally from it.

If the real package was imported already (a test or a tool using ``IPRoute``), we
leave it alone: the submodules are the same files either way.

Only this module knows about the trick. Everything else loads pyroute2 modules
through ``load()``: the netlink transport takes ``nlmsgerr`` from here, each netlink
family loads its own message classes (rtnetlink's in ``network/netlink.py``,
ctnetlink's in ``firewall/conntrack.py``).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

PACKAGE = "pyroute2"


def package_dir() -> str:
    """Return the directory of the installed pyroute2 package without importing it.

    ``importlib.util.find_spec("pyroute2")`` would do, but only before the stub is
    installed and it costs more than this scan; a frozen (PyInstaller) build has
    no real directory on ``sys.path``, its archive importer serves ``_MEIPASS``.
    """
    if getattr(sys, "frozen", False):
        base = getattr(sys, "_MEIPASS", None)
        if base is None:
            raise ImportError("frozen build without sys._MEIPASS: cannot locate pyroute2")
        return os.path.join(base, PACKAGE)
    for entry in sys.path:
        candidate = os.path.join(entry or os.getcwd(), PACKAGE)
        if os.path.isfile(os.path.join(candidate, "__init__.py")):
            return candidate
    raise ImportError("pyroute2 is not installed (not found on sys.path)")


def install_stub() -> None:
    """Make ``pyroute2`` importable as a namespace whose ``__init__`` never runs."""
    if PACKAGE in sys.modules:
        return
    stub = types.ModuleType(PACKAGE)
    stub.__path__ = [package_dir()]
    # From now on "import pyroute2" anywhere in this process returns the stub, so
    # "from pyroute2 import IPRoute" fails: import the full package before this
    # module if a process needs both.
    sys.modules[PACKAGE] = stub
    config = _LightConfig(f"{PACKAGE}.config")
    sys.modules[config.__name__] = config
    stub.config = config  # type: ignore[attr-defined]


class _LightConfig(types.ModuleType):
    """``pyroute2.config`` as far as the message classes read it.

    The real module imports multiprocessing and platform and calls ``uname`` (about 5 ms of
    every start) for settings only pyroute2's sockets use. The message classes read the
    three below. Anything else loads the real module once, under its own name, and takes
    its values: what is read is always pyroute2's own setting.
    """

    AF_BRIDGE = 7
    data_plugins_pkgs: list[str] = []
    data_plugins_path: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
        return getattr(real, name)


class _Deferred(types.ModuleType):
    """A stand-in for a standard module pyroute2 imports but uses only when something fails
    or is configured.

    ``pyroute2.netlink`` imports logging and traceback (about 4 ms with what they pull in)
    to report decoding errors, ``ifinfmsg`` pkgutil to load link-kind plugins from packages
    named in its config (none). While pyroute2 loads, these names resolve to this stand-in;
    the first attribute read imports the real module and forwards to it. ``getLogger`` at
    import time returns a logger that does the same on its first use, so a warning pyroute2
    logs later still reaches the real logging module.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "getLogger" and sys.modules.get(self.__name__) is self:
            return _DeferredLogger
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


class _DeferredLogger:
    def __init__(self, name: str | None = None) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import logging
        return getattr(logging.getLogger(self._name), attr)


_DEFERRED = ("logging", "traceback", "pkgutil")


def load(name: str) -> types.ModuleType:
    """A pyroute2 module by its name below the package, e.g. "netlink.nfnetlink.nfctsocket"."""
    stand_ins = {m: _Deferred(m) for m in _DEFERRED if m not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        for module, stand_in in stand_ins.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]


install_stub()

# Imported through importlib rather than "from pyroute2... import": the stub must be
# in place first, and an import statement would be hoisted by formatters and is
# untyped anyway (pyroute2 ships no py.typed), so mypy sees Any either way.
nlmsgerr: Any = load("netlink").nlmsgerr
