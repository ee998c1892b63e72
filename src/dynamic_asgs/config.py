"""Configuration loading and validation: one home for every daemon and tool.

Each daemon ships a JSON schema (draft 2020-12) beside its code. :func:`load_config`
reads a JSON file, fills in the schema's defaults and validates it; any problem
becomes a :class:`~dynamic_asgs.errors.ConfigError` whose one-line message names
the file, the offending key (as a JSON path) and the reason. Daemons turn that
into exit status 2.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from dynamic_asgs.errors import ConfigError

__all__ = ["json_path", "load_config", "load_schema", "validate_config"]


def load_schema(package: str, name: str) -> dict[str, Any]:
    """Load a JSON schema shipped as package data (``package``/``name``)."""
    text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return schema


def _resolve(sub: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Merge a local ``$ref`` (``#/$defs/...``) into ``sub``; keys beside the ref win."""
    ref = sub.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return sub
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in sub.items() if k != "$ref"}}


def _fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> None:
    """Set defaults declared in ``schema`` (recursively through ``properties`` and local refs)."""
    root = schema if root is None else root
    if not isinstance(instance, dict):
        return
    for key, sub in _resolve(schema, root).get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)


def json_path(error: jsonschema.ValidationError) -> str:
    """Where in the document ``error`` is, as a JSON path (``$.a[0].b``)."""
    parts = ["$"]
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts)


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return f"unknown key(s) {', '.join(repr(k) for k in extra)}"
    message = str(error.message)
    if error.validator == "required":
        return message.replace(" is a required property", " is required")
    return message


def _errors(config: Any, schema: dict[str, Any]) -> Iterator[jsonschema.ValidationError]:
    errors: Iterator[jsonschema.ValidationError] = Draft202012Validator(schema).iter_errors(config)
    return errors


def validate_config(config: Any, schema: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Fill defaults into a copy of ``config`` and validate it; return the copy."""
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema)
    error = best_match(_errors(filled, schema))
    if error is not None:
        raise ConfigError(f"{source}: {json_path(error)}: {_describe(error)}")
    if not isinstance(filled, dict):
        raise ConfigError(f"{source}: the configuration must be a JSON object")
    return filled


def load_config(path: str | Path, schema: dict[str, Any]) -> dict[str, Any]:
    """Read, default-fill and validate the JSON configuration file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    return validate_config(raw, schema, source=str(path))
