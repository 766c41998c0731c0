"""Writing the TOML subset edgetwin's config files use (the standard library only reads TOML)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """`value` as a TOML value: tables nested inside a section become inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string: same quotes, same escapes.
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def toml_document(data: Mapping[str, Any]) -> str:
    """A config file's text: each top-level table a `[section]`, each list of tables an array
    of tables (`[[devices]]`), anything deeper inline. Nothing is validated here."""
    lines: list[str] = []
    for name, content in data.items():
        key = json.dumps(str(name))
        if isinstance(content, Mapping):
            tables = [content]
            header = f"[{key}]"
        elif isinstance(content, list | tuple) and all(isinstance(t, Mapping) for t in content):
            tables = list(content)
            header = f"[[{key}]]"
        else:
            raise TypeError(f"top-level {name!r} must be a table or a list of tables")
        for table in tables:
            lines.append(header)
            lines.extend(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in table.items())
            lines.append("")
    return "\n".join(lines)
