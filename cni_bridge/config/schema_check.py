"""A fast yes/no check of a document against the plugin's JSON Schema.

jsonschema is the authority on validity and explains every rejection, but importing it
costs ~110 ms, more than a whole ADD. This interpreter covers only the keywords our schema
uses and answers the one question the happy path asks: valid or not. Any "no" is handed
to jsonschema for the verdict and the explanation; tests prove the two agree.
"""

from __future__ import annotations

import re

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_KEYWORDS = frozenset({
    "$schema", "$id", "$defs", "$comment", "title", "description", "default", "examples",
    "$ref", "type", "properties", "required", "additionalProperties", "items", "enum",
    "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "not",
    "emptyIsUnset",  # ours: read by config/gojson.py before validation, nothing to check
})


class UnsupportedKeyword(Exception):
    """The schema uses a keyword this checker does not implement: a test failure, not a user error."""


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _json_equal(a: Any, b: Any) -> bool:
    # JSON Schema equality: true is not 1, although Python says so.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


class SchemaChecker:
    def __init__(self, schema: dict[str, Any]) -> None:
        self._root = schema
        self._patterns: dict[str, re.Pattern[str]] = {}

    def is_valid(self, instance: Any) -> bool:
        return self._check(self._root, instance)

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise UnsupportedKeyword(f"non-local $ref {ref}")
        node: Any = self._root
        for part in ref[2:].split("/"):
            node = node[part]
        return dict(node)

    def _check(self, schema: dict[str, Any], value: Any) -> bool:
        for keyword, arg in schema.items():
            if keyword not in SUPPORTED_KEYWORDS:
                raise UnsupportedKeyword(keyword)
            if not self._keyword(keyword, arg, schema, value):
                return False
        return True

    def _keyword(self, keyword: str, arg: Any, schema: dict[str, Any], value: Any) -> bool:
        if keyword == "$ref":
            return self._check(self._resolve(arg), value)
        if keyword == "type":
            names = arg if isinstance(arg, list) else [arg]
            return any(_TYPES[name](value) for name in names)
        if keyword == "enum":
            return any(_json_equal(value, option) for option in arg)
        if keyword == "not":
            return not self._check(arg, value)
        if isinstance(value, dict):
            return self._object_keyword(keyword, arg, schema, value)
        if isinstance(value, list):
            if keyword == "items":
                return all(self._check(arg, item) for item in value)
            if keyword == "minItems":
                return bool(len(value) >= arg)
            return True
        if isinstance(value, str):
            if keyword == "pattern":
                pattern = self._patterns.get(arg)
                if pattern is None:
                    pattern = self._patterns[arg] = re.compile(arg)
                return pattern.search(value) is not None
            if keyword == "minLength":
                return bool(len(value) >= arg)
            if keyword == "maxLength":
                return bool(len(value) <= arg)
            return True
        if _TYPES["number"](value):
            if keyword == "minimum":
                return bool(value >= arg)
            if keyword == "maximum":
                return bool(value <= arg)
        return True

    def _object_keyword(self, keyword: str, arg: Any, schema: dict[str, Any], value: dict[str, Any]) -> bool:
        if keyword == "required":
            return all(name in value for name in arg)
        if keyword == "properties":
            return all(self._check(sub, value[name]) for name, sub in arg.items() if name in value)
        if keyword == "additionalProperties":
            known = schema.get("properties", {})
            extra = [name for name in value if name not in known]
            if arg is True:
                return True
            if arg is False:
                return not extra
            return all(self._check(arg, value[name]) for name in extra)
        return True
