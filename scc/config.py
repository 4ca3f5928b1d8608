"""Configs are dataclasses with documented defaults, overridable from a YAML file and from
`--set key=value` on the command line (dotted keys reach nested dataclasses), and saved next to
every result."""

from __future__ import annotations

import dataclasses
import datetime
import json
import types
import typing
from pathlib import Path

import yaml

from .io import atomic_write_text


def _optional(hint):
    """T for a `T | None` annotation (a field whose default is None), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type):
            return args[0]
    return None


def _coerce(value, current, hint, key):
    text = value if isinstance(value, str) else None  # as written after `--set key=`
    if text is not None:
        try:
            value = yaml.safe_load(text)  # "3" -> 3, "true" -> True, "[1, 2]" -> [1, 2], "null" -> None
        except yaml.YAMLError:
            pass
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        return apply_overrides(current, value)
    want = type(current) if current is not None else _optional(hint)
    if value is None or want is None:
        return value
    if want is str and not isinstance(value, str):
        # a name or path that YAML reads as a number, a date or a boolean ("2024", "2024-01-01", "on"): as written
        if text is not None:
            return text
        if isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool):
            return str(value)  # from a YAML file, where the text is gone
    if want is tuple and isinstance(value, list):
        return tuple(_coerce(v, current[0], None, f"{key}[{i}]") for i, v in enumerate(value)) if current else tuple(value)
    if want is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # also "1e-4", which YAML 1.1 reads as a string
        except ValueError:
            pass
    if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):  # True is an int in Python
        raise ValueError(f"scc: config key `{key}` expects {want.__name__}, got {value!r}")
    return value


def apply_overrides(cfg, overrides: dict):
    """A copy of dataclass `cfg` with `overrides` ({"a.b": v} or nested dicts) applied; unknown keys fail."""
    changes: dict = {}
    nested: dict[str, dict] = {}
    names = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ValueError(f"scc: unknown config key `{key}` for {type(cfg).__name__}; known: {sorted(names)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = _coerce(value, getattr(cfg, head), hints[head], key)
    for head, sub in nested.items():
        changes[head] = apply_overrides(changes.get(head, getattr(cfg, head)), sub)
    return dataclasses.replace(cfg, **changes)


def parse_sets(pairs: typing.Iterable[str]) -> dict:
    out = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ValueError(f"scc: --set expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v
    return out


def load(cls, path: str | None = None, sets: typing.Iterable[str] = (), flags: dict | None = None):
    """cls() <- YAML file <- --set pairs <- command-line flags ({field: value}; None = flag not given)."""
    cfg = cls()
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"scc: config file not found: {path}")
        try:
            with p.open() as f:  # from the stream, YAML's message names the file and line
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"scc: config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"scc: config file {path} must hold a mapping, got {type(data).__name__}")
        cfg = apply_overrides(cfg, data)
    cfg = apply_overrides(cfg, parse_sets(sets))
    return apply_overrides(cfg, {k: v for k, v in (flags or {}).items() if v is not None})


def to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls, data: dict):
    return apply_overrides(cls(), data)


def save_yaml(cfg, path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
