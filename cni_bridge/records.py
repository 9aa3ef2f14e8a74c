"""`@record()`: dataclass-style models without the dataclasses module.

dataclasses imports inspect (and with it ast, dis, tokenize) and exec()s generated code for
every class: about 25 ms of each plugin start for our ~20 models, more than the netlink work
of a whole ADD. These records build __init__, __repr__, __eq__ and __hash__ from closures;
mypy sees them as dataclasses through PEP 681's dataclass_transform.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    T = TypeVar("T")
else:
    def dataclass_transform(**_: object) -> object:
        return lambda function: function

_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], T]) -> T:
    """A default built afresh for each instance (a list, say), like dataclasses.field."""
    return _Factory(default_factory)  # type: ignore[return-value]


class FrozenInstanceError(AttributeError):
    pass


@dataclass_transform(field_specifiers=(field,))
def record(*, frozen: bool = False) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        names = tuple(cls.__dict__.get("__annotations__", {}))
        defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
        setter = object.__setattr__
        post_init = getattr(cls, "__post_init__", None)

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__}() takes {len(names)} arguments, {len(args)} given")
            values = dict(zip(names, args))
            for key, value in kwargs.items():
                if key not in names or key in values:
                    raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {key!r}")
                values[key] = value
            for name in names:
                if name in values:
                    setter(self, name, values[name])
                    continue
                default = defaults.get(name, _MISSING)
                if default is _MISSING:
                    raise TypeError(f"{cls.__name__}() missing argument {name!r}")
                setter(self, name, default.make() if isinstance(default, _Factory) else default)
            if post_init is not None:
                post_init(self)

        def __repr__(self: Any) -> str:
            return f"{cls.__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

        def __eq__(self: Any, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return all(getattr(self, n) == getattr(other, n) for n in names)

        namespace: dict[str, Any] = {"__init__": __init__, "__repr__": __repr__, "__eq__": __eq__,
                                     "__match_args__": names}
        if frozen:
            def __setattr__(self: Any, name: str, value: Any) -> None:
                raise FrozenInstanceError(f"cannot assign to field {name!r} of frozen {cls.__name__}")

            def __hash__(self: Any) -> int:
                return hash(tuple(getattr(self, n) for n in names))

            namespace["__setattr__"] = __setattr__
            namespace["__delattr__"] = __setattr__
            namespace["__hash__"] = __hash__
        else:
            namespace["__hash__"] = None
        for key, value in namespace.items():
            setattr(cls, key, value)
        for name in defaults:  # instance attributes only, as in dataclasses
            if isinstance(defaults[name], _Factory):
                delattr(cls, name)
        return cls

    return wrap
