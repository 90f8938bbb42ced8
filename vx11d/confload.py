"""Typed config machinery: YAML mappings checked into frozen dataclasses, or refused whole.

A section is a dataclass whose fields carry their documentation and limits in
``field(metadata=...)`` (see :func:`opt`). :func:`build` converts a parsed mapping
into it and raises :class:`ConfigError` naming the file, the dotted key and the reason
for the first problem found: an unknown key, a wrong type, an out-of-range value.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Literal

import yaml

from .errors import ConfigError

# Bounds on what one YAML file may expand to (aliases included): a real config has a
# few hundred values; these refuse an alias bomb before it costs time or memory.
MAX_VALUES = 20_000  # scalars and collections, counting each alias as what it names
MAX_DEPTH = 32  # collections nested in each other
MAX_ITEMS = 1000  # entries of one list or mapping (rules, templates, patterns)


class Duration(float):
    """Seconds; written in YAML as a number or a string like ``90s``, ``5m``, ``2h``, ``7d``."""


class Size(int):
    """Bytes; written in YAML as a number or a string like ``512M``, ``6G`` (powers of 1024)."""


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_duration(value: Any) -> Duration:
    """Seconds from a number or a ``2h``-style string; ValueError if it is neither."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 2h, 7d or a number of seconds")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("duration must be finite")
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return Duration(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f"expected a duration like 30s, 5m, 2h, 7d; got {value!r:.60}")


def parse_size(value: Any) -> Size:
    """Bytes from a number or a ``6G``-style string; ValueError if it is neither."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512M or 6G or a number of bytes")
    if isinstance(value, int):
        return Size(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
            return Size(int(float(m.group(1)) * _SIZE_UNITS[unit]))
    raise ValueError(f"expected a size like 512M or 6G; got {value!r:.60}")


_LoaderBase: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, first: int, again: int):
        super().__init__(f"key {key!r} given twice")
        self.key, self.first, self.again = key, first, again


class _StrictLoader(_LoaderBase):  # type: ignore[misc, valid-type]
    """A safe loader that refuses a key given twice in one mapping (merge keys aside)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or \
                        not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)  # as written: cheap, no construct
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key_node.value, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(text: str, path: str) -> None:
    """ConfigError when the document, aliases expanded, is too big or too deep.

    One pass over the parser's events, stopping at the first excess: each anchor's
    expanded size and height are recorded when its node ends, and an alias counts as
    the node it names."""
    size: dict[str, int] = {}
    height: dict[str, int] = {}
    stack: list[list[Any]] = []  # [anchor, count at start, tallest child, children, cap]
    count = 0

    def grow(n: int, h: int, mark: Any) -> None:
        nonlocal count
        count += n
        where = f"line {mark.line + 1}" if mark is not None else ""
        if count > MAX_VALUES:
            raise ConfigError(path, where, f"expands to more than {MAX_VALUES} values "
                              "(aliases count as what they repeat); write a smaller config")
        if len(stack) + h > MAX_DEPTH:
            raise ConfigError(path, where, f"nested deeper than {MAX_DEPTH} levels")
        if stack:
            top = stack[-1]
            top[2] = max(top[2], h)
            top[3] += 1
            if top[3] > top[4]:
                raise ConfigError(path, where, "a list or mapping with more than "
                                  f"{MAX_ITEMS} entries")

    for ev in yaml.parse(text, Loader=_LoaderBase):
        if isinstance(ev, yaml.ScalarEvent):
            grow(1, 1, ev.start_mark)
            if ev.anchor:
                size[ev.anchor], height[ev.anchor] = 1, 1
        elif isinstance(ev, yaml.AliasEvent):
            grow(size.get(ev.anchor, 1), height.get(ev.anchor, 1), ev.start_mark)
        elif isinstance(ev, yaml.CollectionStartEvent):
            grow(1, 1, ev.start_mark)
            cap = MAX_ITEMS * (2 if isinstance(ev, yaml.MappingStartEvent) else 1)
            stack.append([ev.anchor, count, 0, 0, cap])
        elif isinstance(ev, yaml.CollectionEndEvent) and stack:
            anchor, start, tallest, _, _ = stack.pop()
            if stack:
                stack[-1][2] = max(stack[-1][2], tallest + 1)
            if anchor:
                size[anchor], height[anchor] = count - start + 1, tallest + 1


def load_yaml(text: str, path: str) -> Any:
    """The YAML document in ``text``; ConfigError (with the line) when it is not valid
    YAML, repeats a key, or expands beyond :data:`MAX_VALUES` / :data:`MAX_DEPTH`."""
    try:
        _check_expansion(text, path)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except _DuplicateKey as e:
        raise ConfigError(path, f"line {e.again}", f"key {e.key[:64]!r} given twice (first "
                          f"on line {e.first}); keep one") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(yaml)"
        raise ConfigError(path, where, f"not valid YAML: {getattr(e, 'problem', e)}") from e


def format_size(n: int | None) -> str:
    """Bytes as a short size (``32M``, ``1.5G``), as systemd prints them; ``unknown``."""
    if n is None:
        return "unknown"
    for unit, f in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= f:
            v = n / f
            return f"{v:.0f}{unit}" if v >= 100 or v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"


def opt(default: Any = dataclasses.MISSING, doc: str = "", *, lo: float | None = None,
        hi: float | None = None, check: typing.Callable[[Any], str | None] | None = None,
        factory: typing.Callable[[], Any] | None = None) -> Any:
    """A documented config field: ``lo``/``hi`` bound numbers, ``check`` returns an error."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "check": check}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if tp is Duration:
        return "duration"
    if tp is Size:
        return "size"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any, path: str, key: str) -> Any:
    """Check and convert one value against a type annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return convert(value, inner[0], path, key)
        raise TypeError(f"unsupported union {tp}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, key)
    try:
        if tp is Duration:
            return parse_duration(value)
        if tp is Size:
            return parse_size(value)
    except ValueError as e:
        raise ConfigError(path, key, str(e)) from e
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(path, key, f"must be {_type_name(tp)}; got {value!r:.60}")
        return value
    if origin in (list, dict) and isinstance(value, list | dict) and len(value) > MAX_ITEMS:
        raise ConfigError(path, key, f"has {len(value)} entries; at most {MAX_ITEMS}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, key, f"must be a {_type_name(tp)}; got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return tuple(convert(v, item, path, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, key, f"must be a {_type_name(tp)}; got {type(value).__name__}")
        _, item = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(path, f"{key}.{k}", "keys must be non-empty strings")
            out[k] = convert(v, item, path, f"{key}.{k}")
        return types.MappingProxyType(out)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, key, f"must be true or false; got {value!r:.60}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, key, f"must be an integer; got {value!r:.60}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, key, f"must be a number; got {value!r:.60}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, key, f"must be a string; got {type(value).__name__}")
        if "\x00" in value:
            raise ConfigError(path, key, "must not contain NUL bytes")
        return value
    raise TypeError(f"unsupported config type {tp} at {key}")


def build(cls: type, data: Any, path: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from mapping ``data``; ConfigError on the first problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, prefix or "(top level)",
                          f"must be a mapping; got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(path, _join(prefix, str(k)), f"unknown key (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(path, key, "is required")
            continue
        value = convert(data[name], hints[name], path, key)
        _check_limits(value, f.metadata, path, key)
        kwargs[name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        err = validate()
        if err:
            raise ConfigError(path, prefix or "(top level)", err)
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config class (resolving costs ~0.1 ms: once per class)."""
    return typing.get_type_hints(cls)


def _check_limits(value: Any, meta: typing.Mapping[str, Any], path: str, key: str) -> None:
    lo, hi, check = meta.get("lo"), meta.get("hi"), meta.get("check")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(path, key, f"must be >= {lo}; got {value}")
        if hi is not None and value > hi:
            raise ConfigError(path, key, f"must be <= {hi}; got {value}")
    if check is not None and value is not None:
        err = check(value)
        if err:
            raise ConfigError(path, key, err)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_regex(value: str) -> str | None:
    """A ``check=`` for fields that hold a regular expression."""
    try:
        re.compile(value)
    except re.error as e:
        return f"not a valid regular expression: {e}"
    return None


def check_abs_path(value: str) -> str | None:
    """A ``check=`` for fields that hold an absolute path (empty means unset)."""
    if value and not value.startswith("/"):
        return f"must be an absolute path; got {value!r}"
    return None


def describe(cls: type, indent: int = 0) -> list[str]:
    """Commented YAML lines documenting every key of ``cls`` with its default."""
    import yaml

    lines: list[str] = []
    pad = "  " * indent
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        doc = f.metadata.get("doc", "")
        bounds = []
        if f.metadata.get("lo") is not None:
            bounds.append(f">= {f.metadata['lo']}")
        if f.metadata.get("hi") is not None:
            bounds.append(f"<= {f.metadata['hi']}")
        extra = f" ({', '.join(bounds)})" if bounds else ""
        lines.append(f"{pad}# {doc} [{_type_name(tp)}{extra}]".rstrip())
        if dataclasses.is_dataclass(tp):
            lines.append(f"{pad}{f.name}:")
            lines.extend(describe(tp, indent + 1))
            continue
        default = (f.default_factory() if f.default is dataclasses.MISSING
                   and f.default_factory is not dataclasses.MISSING else f.default)
        if default is dataclasses.MISSING:
            lines.append(f"{pad}# {f.name}: (required)")
            continue
        plain = _plain(default)
        dumped = yaml.safe_dump({f.name: plain}, default_flow_style=False, sort_keys=False,
                                width=1000).rstrip("\n").split("\n")
        lines.extend(pad + d for d in dumped)
        item = _item_class(tp)
        if item is not None:
            lines.append(f"{pad}# each item of {f.name} has these keys:")
            lines.extend(f"{pad}#   {ln.strip()}" if ln.lstrip().startswith("#")
                         else f"{pad}#   {ln}" for ln in describe(item))
    return lines


def _item_class(tp: Any) -> type | None:
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        inner = typing.get_args(tp)[-1]
        if dataclasses.is_dataclass(inner):
            return inner  # type: ignore[return-value]
    return None


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, typing.Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Duration | float):
        f = float(value)
        return int(f) if f.is_integer() else f
    if isinstance(value, Size):
        return int(value)
    return value
