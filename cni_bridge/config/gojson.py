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

    def inherit(self, obj: dict[str, Any], earlier: dict[str, Any] | None) -> None:
        """`obj` continues `earlier` (a repeated key merging into it)."""
        if earlier is not None and id(earlier) in self._by_object:
            self._by_object[id(obj)] = dict(self._by_object[id(earlier)])

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


class JsonObject(dict):  # type: ignore[type-arg]
    """A decoded JSON object that remembers every member, repeated keys included.

    As a dict it holds the last value of each key, as json.loads does; `pairs` keeps them
    all in order, because Go decodes a repeated key into what the earlier one left.
    Build it with `json.loads(..., object_pairs_hook=JsonObject.from_pairs)`.
    """

    pairs: list[tuple[str, Any]]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> JsonObject:
        obj = cls(pairs)
        obj.pairs = pairs
        return obj


def _members(value: dict[str, Any]) -> list[tuple[str, Any]]:
    return value.pairs if isinstance(value, JsonObject) else list(value.items())


# Schema annotation: an empty string here means "not set", as Go's zero value does for
# the reference's optional strings and IP addresses (go-cni sends `"RangeStart": ""`).
EMPTY_IS_UNSET = "emptyIsUnset"


class _Canonicalizer:
    """Decodes as Go's encoding/json does into the structs the shape stands for:

    - a member sets the field it names: its exact name, else the first field that matches it
      case-insensitively; members no field takes are kept as they are (and ignored);
    - a repeated member decodes into what the earlier one left: an object merges into the
      earlier object, an array's elements into the earlier array's elements (Go reuses them),
      a map keeps its earlier keys; a scalar replaces;
    - `null` clears an object, array or map field (Go sets it to nil) and leaves a scalar as
      it was; an empty string clears a field annotated `emptyIsUnset`.
    """

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

    @staticmethod
    def _is_container(shape: dict[str, Any]) -> bool:
        kind = shape.get("type")
        return kind in ("object", "array") or "properties" in shape or "items" in shape

    def value(self, shape: dict[str, Any], value: Any, earlier: Any = None) -> Any:
        shape = self._resolve(shape)
        if isinstance(value, dict):
            return self._object(shape, value, earlier if isinstance(earlier, dict) else None)
        if isinstance(value, list) and isinstance(shape.get("items"), dict):
            reused = earlier if isinstance(earlier, list) else []
            return [self.value(shape["items"], item, reused[i] if i < len(reused) else None)
                    for i, item in enumerate(value)]
        return value

    def _object(self, shape: dict[str, Any], value: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
        properties = shape.get("properties")
        extra = shape.get("additionalProperties")
        if not isinstance(properties, dict):
            if not isinstance(extra, dict):
                return value
            merged = dict(earlier or {})  # a map: keys are data, and Go keeps earlier ones
            for key, item in _members(value):
                merged[key] = self.value(extra, item, merged.get(key))
            return merged
        out: dict[str, Any] = dict(earlier or {})
        self.origins.inherit(out, earlier)
        fields = self._fields(properties)
        for key, item in _members(value):
            name = key if key in properties else fields.get(fold(key))
            if name is None:
                out[key] = self.value(extra, item) if isinstance(extra, dict) else item
                continue
            field = self._resolve(properties[name])
            if item is None or (item == "" and field.get(EMPTY_IS_UNSET)):
                if item == "" or self._is_container(field):
                    out.pop(name, None)
                continue
            out[name] = self.value(field, item, out.get(name))
            self.origins.note(out, name, key)
        return out


def canonicalize(document: dict[str, Any], shape: dict[str, Any]) -> tuple[dict[str, Any], Origins]:
    """A copy of `document` as Go would have decoded it, with known keys spelled as `shape`
    spells them and unset fields left out."""
    canonicalizer = _Canonicalizer(shape)
    return canonicalizer.value(shape, document), canonicalizer.origins
