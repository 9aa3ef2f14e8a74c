"""JSON text to Python values with the C scanner alone, for the warm helper's client.

`import json` costs ~8 ms on a start that has nothing else to do: json.decoder compiles
regular expressions at import, which loads re, enum, functools and collections. The client
only looks at two keys of the config before it hands the request over, so it reads the text
with `_json`'s scanner (the very one json.loads uses) and the same rules: only JSON
whitespace around the value, nothing after it.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Context:
    """The attributes the C scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_refuse_constant)


def loads(raw: bytes) -> Any:
    """The value of a strictly UTF-8 JSON text. ValueError (or UnicodeDecodeError, a
    ValueError) when it is not one; RecursionError when nested too deeply."""
    text = raw.decode("utf-8")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        # typeshed types the context as a scanner; the C code reads only the attributes above.
        value, end = _json.make_scanner(_Context())(text, start)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("no JSON value") from None
    except SystemError:
        # The scanner raises its JSONDecodeError from json.decoder only if that module is
        # loaded; otherwise CPython 3.11 reports "returned NULL without setting an exception".
        raise ValueError("not JSON") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError("extra data after the JSON value")
    return value
