"""Read a JSON document the way Go's encoding/json fills a struct.

Runtimes and the reference plugins are Go. Their structs match a key exactly if a field has
that name, and otherwise case-insensitively (containerd's go-cni sends `"HostPort"` because
its structs have no JSON tags); unknown keys are ignored; `null` leaves a field at its zero
value. `canonicalize` rewrites a document so that every key a shape knows carries the
shape's spelling, after which the schema and the model read it with plain dict lookups.

A shape is the part of a JSON Schema that says where keys are: `properties`, `items`,
`additionalProperties` (a map: its keys are data, never folded) and local `$ref`s. The
plugin's schema is one; result.py has another for results.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Go 1.19's equalFoldRight (the reference plugins in Debian 12 are built with it) lets the
# Kelvin sign match k and the long s match s; everything else that folds is ASCII.
_FOLD = {**{chr(c): chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}, "\u212a": "k", "\u017f": "s"}
_FOLD_TABLE = str.maketrans(_FOLD)


class FractionalNumber(float):
    """A JSON number written with a fraction or an exponent (`1500.0`, `1.5e3`).

    Go's encoding/json will not put one in an int field, while JSON Schema calls 1500.0 an
    integer; read with `json.loads(..., parse_float=FractionalNumber)`, such a number is not
    an integer for the schema either. Everything else sees a float.
    """

    def is_integer(self) -> bool:
        return False


def fold(key: str) -> str:
    return key.translate(_FOLD_TABLE)


class Origins:
    """Which key the caller wrote for each canonical key, so messages can quote the caller."""

    def __init__(self) -> None:
        self._by_object: dict[int, dict[str, str]] = {}

    def note(self, obj: dict[str, Any], canonical: str, written: str) -> None:
        self._by_object.setdefault(id(obj), {})[canonical] = written

    def written_path(self, document: Any, path: list[str | int]) -> list[str | int]:
        """`path` into the canonical document, spelled with the caller's keys."""
        written: list[str | int] = []
        node = document
        for part in path:
            if isinstance(part, str) and isinstance(node, dict):
                written.append(self._by_object.get(id(node), {}).get(part, part))
                node = node.get(part)
            elif isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
                written.append(part)
                node = node[part]
            else:
                written.append(part)
                node = None
        return written


class _Canonicalizer:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.origins = Origins()
        self._field_index: dict[int, dict[str, str]] = {}

    def _resolve(self, shape: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in shape:
            node: Any = self.root
            for part in shape["$ref"][2:].split("/"):
                node = node[part]
            shape = node
        return shape

    def _fields(self, properties: dict[str, Any]) -> dict[str, str]:
        index = self._field_index.get(id(properties))
        if index is None:
            index = {}
            for name in properties:  # the first field in order wins a fold tie, as in Go
                index.setdefault(fold(name), name)
            self._field_index[id(properties)] = index
        return index

    def value(self, shape: dict[str, Any], value: Any) -> Any:
        shape = self._resolve(shape)
        if isinstance(value, dict):
            return self._object(shape, value)
        if isinstance(value, list) and isinstance(shape.get("items"), dict):
            return [self.value(shape["items"], item) for item in value]
        return value

    def _object(self, shape: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
        properties = shape.get("properties")
        extra = shape.get("additionalProperties")
        out: dict[str, Any] = {}
        if not isinstance(properties, dict):
            if isinstance(extra, dict):  # a map: keys are data
                return {key: self.value(extra, item) for key, item in value.items()}
            return value
        fields = self._fields(properties)
        for key, item in value.items():
            name = key if key in properties else fields.get(fold(key))
            if name is None:
                out[key] = self.value(extra, item) if isinstance(extra, dict) else item
                continue
            if item is None:
                continue  # Go leaves the field as it was: absent, or an earlier key's value
            out[name] = self.value(properties[name], item)
            self.origins.note(out, name, key)
        return out


def canonicalize(document: dict[str, Any], shape: dict[str, Any]) -> tuple[dict[str, Any], Origins]:
    """A copy of `document` with known keys spelled as `shape` spells them, nulls dropped."""
    canonicalizer = _Canonicalizer(shape)
    return canonicalizer.value(shape, document), canonicalizer.origins
