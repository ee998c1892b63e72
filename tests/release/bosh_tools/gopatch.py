"""go-patch, as the bosh CLI applies ops-files (`bosh int` / `bosh deploy -o`), for tests.

Goal: an ops-file that applies here applies under the bosh CLI, and one that the CLI rejects
is rejected here, so the release's ops-files can be tested against its manifests without bosh.

Mechanisms, following go-patch's pointer and operation semantics:
- A path is parsed into tokens: `/key`, `/0` (negative counts from the end), `/-` (after the last
  item, last token only), `/name=value` (the one map item of an array whose `name` is the string
  `value`), with `:prev`/`:next` index modifiers and `:before`/`:after` insertion modifiers.
  `?` after a key or a selector value makes it, and every token to its right, optional.
  `~0 ~1 ~2 ~3 ~7` escape `~ / ? = :`.
- `replace` sets the value (deep-copied per operation); an optional missing key is created as a
  map or an array, as the next token needs; an optional unmatched selector appends an item
  `{name: value}` (or the value itself when it is the last token). `remove` deletes; a missing
  optional key or selector makes it a no-op.
- Anything else that is missing, ambiguous (a selector matching several items) or of the wrong
  type is an `OpsError` naming the operation and the path. `((vars))` are plain strings here.
"""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "AfterLast", "Index", "Key", "Match", "OpsError", "Token", "apply_ops", "apply_ops_files", "load_yaml",
    "parse_pointer",
]

_UNESCAPE = {"~0": "~", "~1": "/", "~2": "?", "~3": "=", "~7": ":"}
_MODIFIERS = ("prev", "next", "before", "after")


class OpsError(Exception):
    """An operation that the bosh CLI would refuse to apply."""


@dataclass(frozen=True)
class Key:
    key: str
    optional: bool


@dataclass(frozen=True)
class Index:
    index: int
    modifiers: tuple[str, ...] = ()


@dataclass(frozen=True)
class AfterLast:
    pass


@dataclass(frozen=True)
class Match:
    key: str
    value: str
    optional: bool
    modifiers: tuple[str, ...] = field(default=())


Token = Key | Index | AfterLast | Match


def _unescape(text: str) -> str:
    return re.sub(r"~[01237]", lambda m: _UNESCAPE[m.group(0)], text)


def parse_pointer(path: str) -> list[Token]:
    """Tokens of a go-patch pointer (the root itself is the empty list)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise OpsError(f"invalid path {path!r}: expected to start with '/'")
    pieces = path.split("/")[1:]
    tokens: list[Token] = []
    optional = False
    for i, piece in enumerate(pieces):
        text, *mods = piece.split(":")
        bad = [m for m in mods if m not in _MODIFIERS]
        if bad:
            raise OpsError(f"invalid path {path!r}: unknown modifier {bad[0]!r} (prev, next, before, after)")
        if text == "-" and i == len(pieces) - 1:
            if mods:
                raise OpsError(f"invalid path {path!r}: no modifiers allowed after '-'")
            tokens.append(AfterLast())
            continue
        if re.fullmatch(r"[+-]?\d+", text):
            tokens.append(Index(int(text), tuple(mods)))
            continue
        if text.endswith("?"):
            optional, text = True, text[:-1]
        if "=" in text:
            key, value = text.split("=", 1)
            tokens.append(Match(_unescape(key), _unescape(value), optional, tuple(mods)))
        elif mods:
            raise OpsError(f"invalid path {path!r}: modifiers are for array indexes and selectors, not keys")
        else:
            tokens.append(Key(_unescape(text), optional))
    return tokens


def _where(tokens: list[Token], upto: int) -> str:
    parts = []
    for token in tokens[: upto + 1]:
        if isinstance(token, Key):
            parts.append(token.key)
        elif isinstance(token, Index):
            parts.append(str(token.index))
        elif isinstance(token, AfterLast):
            parts.append("-")
        else:
            parts.append(f"{token.key}={token.value}")
    return "/" + "/".join(parts)


def _as_list(node: Any, tokens: list[Token], i: int) -> list[Any]:
    if not isinstance(node, list):
        raise OpsError(f"expected an array at path '{_where(tokens, i)}' but found {type(node).__name__}")
    return node


def _as_map(node: Any, tokens: list[Token], i: int) -> dict[Any, Any]:
    if not isinstance(node, dict):
        raise OpsError(f"expected a map at path '{_where(tokens, i)}' but found {type(node).__name__}")
    return node


def _concrete(index: int, modifiers: tuple[str, ...], array: list[Any], tokens: list[Token], i: int) -> int:
    """Index after negative wrap-around and :prev/:next; must name an existing item."""
    result = index + len(array) if index < 0 else index
    for mod in modifiers:
        if mod in ("before", "after"):
            raise OpsError(f"':{mod}' only applies to the last token of a replace (path '{_where(tokens, i)}')")
        result += -1 if mod == "prev" else 1
    if not 0 <= result < len(array):
        raise OpsError(f"expected to find array index {index} but found an array of length {len(array)} "
                       f"at path '{_where(tokens, i)}'")
    return result


def _matches(array: list[Any], token: Match) -> list[int]:
    # go-patch compares the item's value with the selector's string: `/port=80` never matches 80.
    return [n for n, item in enumerate(array)
            if isinstance(item, dict) and isinstance(item.get(token.key), str) and item[token.key] == token.value]


def _one_match(array: list[Any], token: Match, tokens: list[Token], i: int) -> int:
    found = _matches(array, token)
    if len(found) != 1:
        raise OpsError(f"expected to find exactly one matching array item for path '{_where(tokens, i)}' "
                       f"but found {len(found)}")
    return found[0]


def _set_item(array: list[Any], index: int, mods: tuple[str, ...], value: Any, tokens: list[Token], i: int) -> None:
    """Replace the item, or insert before/after it (go-patch's array insertion)."""
    insert = [m for m in mods if m in ("before", "after")]
    if insert and mods[-1] not in ("before", "after"):
        raise OpsError(f"no modifier may follow ':{insert[0]}' (path '{_where(tokens, i)}')")
    base = [m for m in mods if m not in ("before", "after")]
    n = _concrete(index, tuple(base), array, tokens, i)
    if not insert:
        array[n] = value
    else:
        array.insert(n + 1 if insert[-1] == "after" else n, value)


def _new_container(tokens: list[Token], i: int) -> Any:
    nxt = tokens[i + 1]
    if isinstance(nxt, Key):
        return {}
    if isinstance(nxt, AfterLast | Match):
        return []
    raise OpsError(f"expected to find key, matching index or after last index token at path '{_where(tokens, i + 1)}'")


def _replace(node: Any, tokens: list[Token], i: int, value: Any) -> Any:
    token, last = tokens[i], i == len(tokens) - 1
    if isinstance(token, Key):
        mapping = _as_map(node, tokens, i)
        if token.key not in mapping and not token.optional:
            raise OpsError(f"expected to find a map key '{token.key}' for path '{_where(tokens, i)}' "
                           f"(found map keys: {sorted(map(str, mapping))})")
        if last:
            mapping[token.key] = value
        else:
            child = mapping[token.key] if token.key in mapping else _new_container(tokens, i)
            mapping[token.key] = _replace(child, tokens, i + 1, value)
        return mapping
    array = _as_list(node, tokens, i)
    if isinstance(token, AfterLast):
        if not last:
            raise OpsError(f"expected after last index token to be last in path '{_where(tokens, i)}'")
        array.append(value)
    elif isinstance(token, Index):
        if last:
            _set_item(array, token.index, token.modifiers, value, tokens, i)
        else:
            n = _concrete(token.index, token.modifiers, array, tokens, i)
            array[n] = _replace(array[n], tokens, i + 1, value)
    elif token.optional and not _matches(array, token):
        array.append(value if last else _replace({token.key: token.value}, tokens, i + 1, value))
    elif last:
        _set_item(array, _one_match(array, token, tokens, i), token.modifiers, value, tokens, i)
    else:
        n = _concrete(_one_match(array, token, tokens, i), token.modifiers, array, tokens, i)
        array[n] = _replace(array[n], tokens, i + 1, value)
    return array


class _Absent(Exception):
    """An optional part of a remove path is missing: the operation does nothing."""


def _remove(node: Any, tokens: list[Token], i: int) -> None:
    token, last = tokens[i], i == len(tokens) - 1
    if isinstance(token, Key):
        mapping = _as_map(node, tokens, i)
        if token.key not in mapping:
            if token.optional:
                raise _Absent
            raise OpsError(f"expected to find a map key '{token.key}' for path '{_where(tokens, i)}' "
                           f"(found map keys: {sorted(map(str, mapping))})")
        if last:
            del mapping[token.key]
        else:
            _remove(mapping[token.key], tokens, i + 1)
        return
    if isinstance(token, AfterLast):
        raise OpsError(f"cannot remove after last index token in path '{_where(tokens, i)}'")
    array = _as_list(node, tokens, i)
    if isinstance(token, Match):
        if token.optional and not _matches(array, token):
            raise _Absent
        n = _concrete(_one_match(array, token, tokens, i), token.modifiers, array, tokens, i)
    else:
        n = _concrete(token.index, token.modifiers, array, tokens, i)
    if last:
        del array[n]
    else:
        _remove(array[n], tokens, i + 1)


def _apply_one(doc: Any, op: Any, n: int) -> Any:
    if not isinstance(op, dict):
        raise OpsError(f"operation [{n}]: expected a map, found {type(op).__name__}")
    kind, path = op.get("type"), op.get("path")
    where = f"operation [{n}] ({kind} {path})"
    if kind not in ("replace", "remove"):
        raise OpsError(f"{where}: unknown operation type {kind!r} (replace, remove)")
    if not isinstance(path, str):
        raise OpsError(f"{where}: missing path")
    try:
        tokens = parse_pointer(path)
        if kind == "replace":
            if op.get("value") is None:
                raise OpsError("missing value")
            value = copy.deepcopy(op["value"])
            return value if not tokens else _replace(doc, tokens, 0, value)
        if "value" in op:
            raise OpsError("cannot specify value")
        if not tokens:
            raise OpsError("cannot remove entire document")
        with contextlib.suppress(_Absent):
            _remove(doc, tokens, 0)
        return doc
    except OpsError as exc:
        custom = f" ({op['error']})" if isinstance(op.get("error"), str) else ""
        raise OpsError(f"{where}{custom}: {exc}") from exc


def apply_ops(doc: Any, ops: Any) -> Any:
    """A deep copy of ``doc`` with the ops-file's operations (a list of maps) applied in order."""
    if not isinstance(ops, list):
        raise OpsError(f"an ops-file is a list of operations, found {type(ops).__name__}")
    result = copy.deepcopy(doc)
    for n, op in enumerate(ops):
        result = _apply_one(result, op, n)
    return result


def load_yaml(path: Path | str) -> Any:
    """YAML as the bosh CLI reads it (tags and anchors resolved, no custom types)."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def apply_ops_files(manifest: Path | str, *ops_files: Path | str) -> Any:
    """`bosh int manifest -o ops1 -o ops2 ...` without variable interpolation."""
    doc = load_yaml(manifest)
    for ops_file in ops_files:
        try:
            doc = apply_ops(doc, load_yaml(ops_file))
        except OpsError as exc:
            raise OpsError(f"{ops_file}: {exc}") from exc
    return doc
