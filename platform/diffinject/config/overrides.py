"""Command-line overrides (`section.field=value`, typed by the schema), paths made absolute
before they travel to workers, and grid arguments without repeats."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, get_type_hints

from diffinject.config.protocols import apply_baseline_protocol, apply_protocol
from diffinject.config.schema import ExperimentConfig
from diffinject.config.validation import validate
from diffinject.core.errors import ConfigError


def _coerce(text: str, kind: Any, key: str) -> Any:
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.<field>=...")
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes")
        if kind is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"invalid value {text!r} for {key}; expected {kind.__name__}") from None


# Where inputs and outputs live (never what they are: no stage key reads them).
PATH_FIELDS = ("data.data_root", "data.cache_root", "run.storage_path")


def absolute_path(path: str | os.PathLike) -> str:
    """A local path made absolute against this process's working directory; a URI (s3://...)
    as it is. Ray Train workers run in their trial folder and Ray tasks in the folder Ray was
    started in, so a relative path means something else there."""
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(os.path.expanduser(text))


def resolve_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """Make every PATH_FIELDS path of `cfg` absolute (in place), before it travels to workers."""
    for dotted in PATH_FIELDS:
        section, name = dotted.split(".")
        target = getattr(cfg, section)
        setattr(target, name, absolute_path(getattr(target, name)))
    return cfg


def absolute_args(args: Any, *names: str) -> Any:
    """The command-line path arguments `names` of `args` made absolute in place (lists item by
    item; None and URIs left alone; a Path stays a Path)."""
    def fix(value):
        return type(value)(absolute_path(value)) if isinstance(value, os.PathLike) else absolute_path(value)

    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, list):
            setattr(args, name, [fix(v) for v in value])
        elif value is not None:
            setattr(args, name, fix(value))
    return args


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `a.b.c=value` overrides in place, with the field's declared type; then make the
    config's paths absolute (resolve_paths) and validate it. Every entry point makes its
    config through here. A `baselines.protocol=X` or `injection.protocol=X` override first sets
    X's fields (apply_baseline_protocol, apply_protocol), so the other overrides change them,
    whatever their order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"invalid override {item!r}; expected section.field=value")
    for field_name, apply in (("baselines.protocol", apply_baseline_protocol), ("injection.protocol", apply_protocol)):
        protocols = [item.split("=", 1)[1].strip() for item in overrides if item.split("=", 1)[0].strip() == field_name]
        if protocols:
            apply(cfg, protocols[-1])
    for item in overrides:
        key, value = item.split("=", 1)
        target = cfg
        parts = key.strip().split(".")
        for depth, name in enumerate(parts):
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"unknown config field {key!r}: {'.'.join(parts[:depth])} is a value, not a section")
            hints = get_type_hints(type(target))
            if name not in hints:
                where = ".".join(parts[:depth]) or "config"
                raise ConfigError(f"unknown config field {key!r}: {where} has "
                                  f"{', '.join(f.name for f in dataclasses.fields(target))}")
            if depth == len(parts) - 1:
                setattr(target, name, _coerce(value, hints[name], key))
            else:
                target = getattr(target, name)
    resolve_paths(cfg)
    validate(cfg)
    return cfg


def distinct(values: Iterable, what: str, key: Callable[[Any], Any] = lambda v: v) -> list:
    """`values` without repeats (the first of equal `key`s kept), with one printed line when
    some were dropped: a repeated seed is the same run, not another sample."""
    values, first = list(values), {}
    for value in values:
        first.setdefault(key(value), value)
    kept = list(first.values())
    if len(kept) < len(values):
        print(f"note: {what} {' '.join(map(str, values))} repeats values; using {' '.join(map(str, kept))}",
              flush=True)
    return kept
