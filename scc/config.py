"""Configs are dataclasses with documented defaults, overridable from a YAML file and from
`--set key=value` on the command line (dotted keys reach nested dataclasses), and saved next to
every result."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import yaml

from .io import atomic_write_text


def _coerce(value, current, ftype, key):
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)  # "3" -> 3, "true" -> True, "[1, 2]" -> [1, 2], "null" -> None
        except yaml.YAMLError:
            pass
    if dataclasses.is_dataclass(current) and isinstance(value, dict):
        return apply_overrides(current, value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # also "1e-4", which YAML 1.1 reads as a string
        except ValueError:
            pass
    if current is not None and value is not None and not isinstance(value, type(current)):
        raise ValueError(f"scc: config key `{key}` expects {type(current).__name__}, got {value!r}")
    return value


def apply_overrides(cfg, overrides: dict):
    """A copy of dataclass `cfg` with `overrides` ({"a.b": v} or nested dicts) applied; unknown keys fail."""
    changes: dict = {}
    nested: dict[str, dict] = {}
    names = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ValueError(f"scc: unknown config key `{key}` for {type(cfg).__name__}; known: {sorted(names)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = _coerce(value, getattr(cfg, head), names[head].type, key)
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
        data = yaml.safe_load(p.read_text()) or {}
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
