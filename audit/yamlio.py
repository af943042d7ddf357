"""YAML loading that remembers where every value came from.

``yaml.safe_load`` loses line numbers; we compose the node tree as well so that a
validation error at ``sweep.sparsities[2]`` can be reported as ``audit.yaml:14:7``.
Duplicate keys, which PyYAML silently accepts, are rejected.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from audit.errors import ConfigError

MAX_YAML_BYTES = 5 * 1024 * 1024
MAX_YAML_VALUES = 1_000_000
"""The most values a document may hold once its aliases are expanded (a bigger one is an alias bomb)."""


@dataclass
class YamlDocument:
    """A parsed YAML mapping plus the node tree that locates its values."""

    path: str
    data: Any
    root: yaml.Node | None

    def locate(self, loc: Sequence[str | int]) -> tuple[int | None, int | None]:
        """Return the 1-based (line, column) of the value at ``loc``, or of its nearest parent."""
        node = self.root
        best = node
        for part in loc:
            if node is None:
                break
            child = _child(node, part)
            if child is None:
                break
            node = child
            best = node
        if best is None:
            return None, None
        return best.start_mark.line + 1, best.start_mark.column + 1

    def locate_key(self, loc: Sequence[str | int]) -> tuple[int | None, int | None]:
        """Like :meth:`locate` but points at the key itself (for unknown keys)."""
        if not loc:
            return self.locate(loc)
        parent = self.locate_node(loc[:-1])
        if isinstance(parent, yaml.MappingNode):
            for key, _value in parent.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(loc[-1]):
                    return key.start_mark.line + 1, key.start_mark.column + 1
        return self.locate(loc)

    def locate_node(self, loc: Sequence[str | int]) -> yaml.Node | None:
        node = self.root
        for part in loc:
            if node is None:
                return None
            node = _child(node, part)
        return node


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value
        return None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int):
        if 0 <= part < len(node.value):
            return node.value[part]
    return None


def _check_duplicates(node: yaml.Node | None, path: str, seen_nodes: set[int] | None = None) -> None:
    """Reject duplicate keys; each node is visited once (aliases share nodes: no alias bombs)."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    stack = [node]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise ConfigError(
                            f"duplicate key {key.value!r} (first defined on line {seen[key.value]})",
                            file=path,
                            line=key.start_mark.line + 1,
                            column=key.start_mark.column + 1,
                            hint="each key may appear once per mapping",
                        )
                    seen[key.value] = key.start_mark.line + 1
                stack.append(value)
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _check_alias_expansion(root: yaml.Node | None, path: str) -> None:
    """Refuse a document whose aliases expand to more than :data:`MAX_YAML_VALUES` values
    (a "billion laughs" bomb), or that refers to itself; names the top-level key that does.

    Counted over the node graph without expanding it (each distinct node once, iteratively).
    """
    if root is None:
        return
    size: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if children_done:
            on_stack.discard(id(node))
            size[id(node)] = min(1 + sum(size[id(k)] for k in kids), MAX_YAML_VALUES + 1)
            continue
        if id(node) in on_stack:
            raise ConfigError(
                "YAML alias refers to a value that contains it (a recursive structure)",
                file=path,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
            )
        on_stack.add(id(node))
        stack.append((node, True))
        for k in kids:
            if id(k) in on_stack:
                raise ConfigError(
                    "YAML alias refers to a value that contains it (a recursive structure)",
                    file=path,
                    line=k.start_mark.line + 1,
                    column=k.start_mark.column + 1,
                )
            if id(k) not in size:
                stack.append((k, False))
    if size[id(root)] <= MAX_YAML_VALUES:
        return
    where = root
    if isinstance(root, yaml.MappingNode):  # point at the first top-level value that is too big
        where = next((v for _, v in root.value if size[id(v)] > MAX_YAML_VALUES), root)
    raise ConfigError(
        f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb)",
        file=path,
        line=where.start_mark.line + 1,
        column=where.start_mark.column + 1,
        hint="write the values out instead of repeating anchors",
    )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_yaml(path: str | Path, *, what: str = "file") -> YamlDocument:
    """Read a YAML mapping from ``path`` with location info; every failure is a :class:`ConfigError`."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise ConfigError(f"{what} not found", file=shown, hint="check the path")
    if p.is_dir():
        raise ConfigError(f"expected a YAML {what}, found a directory", file=shown)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", file=shown) from None
    return parse_yaml(raw, shown, what=what)


def parse_yaml(raw: bytes | str, shown: str, *, what: str = "file") -> YamlDocument:
    """Parse YAML text (bytes or str) named ``shown`` in error messages."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_YAML_BYTES:
            raise ConfigError(f"{what} is {len(raw)} bytes; the limit is {MAX_YAML_BYTES}", file=shown)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ConfigError(
                f"{what} is not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
                file=shown,
                line=line,
                hint="save the file as UTF-8",
            ) from None
    else:
        text = raw
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_duplicates(root, shown)
        _check_alias_expansion(root, shown)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"invalid YAML: {problem}",
            file=shown,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:  # e.g. ReaderError for control characters
        raise ConfigError(f"invalid YAML: {exc}", file=shown) from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise ConfigError(f"invalid YAML: {type(exc).__name__}: {exc}", file=shown) from None
    if data is None:
        raise ConfigError(f"{what} is empty; expected a mapping of settings", file=shown, line=1)
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of settings at the top level, found {type(data).__name__}",
            file=shown,
            line=1,
        )
    return YamlDocument(path=shown, data=data, root=root)


def _fmt_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxstring = _REPR.maxother = 50


def _describe(value: Any) -> str:
    """A short, bounded description of a value (safe on huge or self-referencing input)."""
    text = _REPR.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def validation_to_config_error(exc: ValidationError, doc: YamlDocument, model: type[BaseModel]) -> ConfigError:
    """Turn the first pydantic error into a located, hinted :class:`ConfigError`."""
    err = exc.errors(include_url=False)[0]
    # pydantic puts union member names into loc; keep only parts present in the YAML
    loc = _real_loc(doc, err["loc"])
    where = _fmt_loc(loc)
    etype = err["type"]
    hint = None
    if etype == "extra_forbidden":
        key = loc[-1] if loc else "?"
        model_loc = [p for p in err["loc"][:-1] if not (isinstance(p, str) and _is_internal(p))]
        allowed = _allowed_keys(model, model_loc)
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else (f"allowed keys here: {', '.join(sorted(allowed))}" if allowed else None)
        )
        line, col = doc.locate_key(loc)
        message = f"{where}: unknown key {key!r}"
    else:
        line, col = doc.locate(loc)
        found = err.get("input")
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if etype == "missing":
            message = f"{where}: required setting is missing"
        else:
            message = f"{where}: {msg}; found {_describe(found)}"
        ctx_hint = (err.get("ctx") or {}).get("hint")
        hint = ctx_hint
    return ConfigError(message, file=doc.path, line=line, column=col, hint=hint)


def _real_loc(doc: YamlDocument, loc: Sequence[Any]) -> list[str | int]:
    """Drop pydantic-internal loc parts (union member names, function validators)."""
    out: list[str | int] = []
    node = doc.root
    for part in loc:
        child = _child(node, part) if node is not None else None
        if child is not None:
            out.append(part)
            node = child
        elif isinstance(node, yaml.MappingNode) and isinstance(part, int) and 0 <= part < len(node.value):
            # a list built from a mapping (`suites: {name: params}`): item i is the mapping's i-th entry
            key, node = node.value[part]
            out.append(key.value)
        elif isinstance(node, yaml.MappingNode) and isinstance(part, str) and not _is_internal(part):
            # a key that is not in the YAML: a missing or unknown key
            out.append(part)
            node = None
        # else: internal name such as 'function-after[...]' or a union tag; skip
    return out


def _is_internal(part: str) -> bool:
    return (
        "[" in part
        or part in {"str", "int", "float", "bool", "list", "dict"}
        or part.startswith(("function-", "tagged-union", "lax-or-strict", "json-or-python"))
    )


def _allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Best-effort list of field names accepted at ``loc`` inside ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _unwrap(fields[part].annotation)
    fields = getattr(current, "model_fields", None)
    if not fields:
        return []
    names = []
    for name, field in fields.items():
        names.append(field.alias or name)
    return names


def _unwrap(annotation: Any) -> Any:
    import typing

    args = typing.get_args(annotation)
    for arg in args or ():
        inner = _unwrap(arg)
        if getattr(inner, "model_fields", None):
            return inner
    return annotation
