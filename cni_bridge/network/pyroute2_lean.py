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

import _thread
import _weakref
import importlib
import os
import sys
import types

# typing costs ~2.6 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
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


class _AnnotationOnly:
    """What a typing name is to pyroute2 while it loads: subscripted or called (``Optional[str]``,
    ``TypeVar("F", bound=Callable[..., Any])``), it gives itself back, and it ends up in
    annotations that nothing reads at run time."""

    def __getitem__(self, _: object) -> _AnnotationOnly:
        return self

    def __call__(self, *_: object, **__: object) -> _AnnotationOnly:
        return self

    def __repr__(self) -> str:
        return "<typing name, unused at run time>"


_ANNOTATION = _AnnotationOnly()

# Names pyroute2's message modules take from typing for annotations, evaluated as each def
# runs (they have no `from __future__ import annotations`). Anything else (cast, overload,
# Generic, TYPE_CHECKING...) is taken from the real module.
_ANNOTATION_NAMES = frozenset(("Any", "Callable", "Dict", "List", "Literal", "Optional", "Set", "Tuple", "TypeVar",
                               "Union"))

# The very objects the standard module would give: threading.Lock is _thread.allocate_lock
# and threading.local is _thread._local; weakref.proxy and ref are _weakref's.
_SAME_OBJECTS: dict[str, dict[str, Any]] = {
    "threading": {"Lock": _thread.allocate_lock, "local": _thread._local},
    "weakref": {"proxy": _weakref.proxy, "ref": _weakref.ref},
}


class _Deferred(types.ModuleType):
    """A stand-in for a standard module pyroute2 imports but uses only when something fails,
    is configured, or in annotations.

    ``pyroute2.netlink`` imports logging and traceback (about 4 ms with what they pull in)
    to report decoding errors, ``ifinfmsg`` pkgutil to load link-kind plugins from packages
    named in its config (none); ``pyroute2.common`` and ``pyroute2.netlink`` import typing
    (about 2.6 ms) for annotations, threading for one lock and one thread-local, and weakref
    for its proxy (together about 1 ms). While pyroute2 loads, these names resolve to this
    stand-in:
    - ``getLogger`` at import time returns a logger that imports logging on its first use,
      so a warning pyroute2 logs later still reaches the real logging module;
    - a pyroute2 module importing an annotation name from typing gets a placeholder;
    - a name in _SAME_OBJECTS is served at once, now and later: it is the same object.
    Any other attribute read imports the real module and forwards to it.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        same = _SAME_OBJECTS.get(self.__name__, {}).get(name)
        if same is not None:
            return same
        if sys.modules.get(self.__name__) is self:
            if name == "getLogger" and self.__name__ == "logging":
                return _DeferredLogger
            if self.__name__ == "typing" and name in _ANNOTATION_NAMES and _called_from_pyroute2():
                return _ANNOTATION
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def _called_from_pyroute2() -> bool:
    """Whether the code reading the attribute (`from typing import X` runs in the importing
    module's frame) belongs to pyroute2; a standard module that happens to load meanwhile
    gets the real typing."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return isinstance(caller, str) and caller.startswith(f"{PACKAGE}.")


class _DeferredLogger:
    def __init__(self, name: str | None = None) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import logging
        return getattr(logging.getLogger(self._name), attr)


_DEFERRED = ("logging", "traceback", "pkgutil", "typing", "threading", "weakref")


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
