"""Config validity: the fast schema check decides, jsonschema explains a rejection."""

from __future__ import annotations

import json
import os
import sys
from ..errors import INVALID_CONFIG, CniError

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .gojson import Origins

SCHEMA_FILE = "cni-bridge.schema.json"


def schema_path() -> str:
    if getattr(sys, "frozen", False):
        return os.path.join(getattr(sys, "_MEIPASS"), "conf", SCHEMA_FILE)
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf", SCHEMA_FILE)


def load_schema() -> dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def json_path(parts: Any) -> str:
    """`ipam.ranges[0][0].subnet` from jsonschema's path deque."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def explain(schema: dict[str, Any], document: Any, origins: Origins | None = None) -> CniError | None:
    """jsonschema's verdict: the most relevant error as a CniError, or None if it accepts.

    `document` is the canonical spelling; `origins` puts the caller's keys back into the path."""
    import jsonschema
    from jsonschema.exceptions import best_match

    validator = jsonschema.Draft202012Validator(schema)
    error = best_match(validator.iter_errors(document))
    if error is None:
        return None
    # Show the innermost cause: "not valid under any of the given schemas" helps nobody.
    while error.context:
        error = best_match(error.context) or error
        break
    parts = list(error.absolute_path)
    message = error.message
    if error.validator == "required" and isinstance(error.instance, dict):
        # Point at the missing key itself, where the user will have to add it.
        missing = next((name for name in error.validator_value if name not in error.instance), None)
        if missing is not None:
            parts.append(missing)
            message = "is required but missing"
    if origins is not None:
        parts = origins.written_path(document, parts)
    if len(message) > 300:  # jsonschema quotes the whole value; a huge one helps nobody
        message = message[:300] + "..."
    where = json_path(parts) or "(top level)"
    return CniError(INVALID_CONFIG, f"{where}: {message}", "the configuration does not match the plugin's schema")


def validate_document(document: Any, schema: dict[str, Any] | None = None, origins: Origins | None = None,
                      explained: bool = True) -> None:
    """CniError(INVALID_CONFIG) unless the schema accepts `document`. `explained=False` skips
    jsonschema's explanation (110 ms of import) where nobody reads it: DEL only logs it."""
    from .schema_check import SchemaChecker

    schema = load_schema() if schema is None else schema
    try:
        if SchemaChecker(schema).is_valid(document):
            return
        if not explained:
            raise CniError(INVALID_CONFIG, "the configuration does not match the plugin's schema")
        error = explain(schema, document, origins)
    except RecursionError:
        raise CniError(INVALID_CONFIG, "the configuration is nested too deeply", "no valid config is") from None
    if error is not None:
        raise error
    # jsonschema is the authority: accept, but say that the fast check is wrong.
    sys.stderr.write("cni-bridge: warning: fast schema check rejected a config jsonschema accepts\n")
