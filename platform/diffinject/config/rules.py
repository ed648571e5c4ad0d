"""The kinds of rule a config field obeys (ranges, choices, checked names) and the shared
ranges; command-line options are checked with the same rules."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from diffinject.core.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """low <= value <= high (an open end excludes the bound); `also` lists values allowed
    outside the range (e.g. -1 for "off"), `noun` names what is counted, `why` says what the
    bounds protect."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    noun: str = ""
    why: str = ""     # what the bounds protect, added to the error

    def contains(self, value: float) -> bool:
        if value in self.also:
            return True
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None and (self.low, self.low_open) in ((0, True), (1, False)):
            text = f"a positive {self.noun}" if self.noun else "positive"
        elif self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.also:
            text += f" (or {' or '.join(str(v) for v in self.also)} to disable)"
        return text

    def check(self, key: str, value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if not self.contains(value):
            raise ConfigError(f"{key} must be {self.describe()}, got {value}" + (f" ({self.why})" if self.why else ""))


@dataclass(frozen=True)
class OneOf:
    choices: tuple[str, ...]

    def check(self, key: str, value: Any) -> None:
        if value not in self.choices:
            names = ", ".join(self.choices[:-1]) + f" or {self.choices[-1]}"
            raise ConfigError(f"{key} must be {names}, got {value!r}")


@dataclass(frozen=True)
class Text:
    """Any non-empty string (a name or a path; output paths are checked by `preflight`)."""

    def check(self, key: str, value: Any) -> None:
        if not value.strip():
            raise ConfigError(f"{key} must not be empty")


@dataclass(frozen=True)
class Checked:
    """A value a function checks (a registry name, a parsed format); it raises ConfigError."""

    check_value: Callable[[str, Any], None]

    def check(self, key: str, value: Any) -> None:
        self.check_value(key, value)


@dataclass(frozen=True)
class Flag:
    def check(self, key: str, value: Any) -> None:
        pass  # the type check is all a bool needs


def known_dataset(key: str, name: str) -> None:
    from diffinject.data.registry import get_dataset_spec

    try:
        get_dataset_spec(name)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def known_preset(key: str, name: str) -> None:
    from diffinject.nets.diffusion.models import get_preset

    try:
        get_preset(name)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def known_gan_preset(family: str) -> Callable[[str, str], None]:
    def check(key: str, name: str) -> None:
        from diffinject.nets.gan.presets import PRESETS

        if name not in PRESETS[family]:
            raise ConfigError(f"{key}: unknown {family} preset {name!r}; expected one of {', '.join(PRESETS[family])}")
    return check


def diffaugment_policy(key: str, text: str) -> None:
    from diffinject.nets.gan.diffaugment import POLICIES

    unknown = [p for p in (q.strip() for q in text.split(",")) if p and p not in POLICIES]
    if unknown:
        raise ConfigError(f"{key}: unknown DiffAugment policy {unknown[0]!r}; expected a comma-separated list of "
                          f"{', '.join(POLICIES)}")


def gan_checkpoint(key: str, value: str) -> None:
    """"" (train in the run), "shipped" (experiment/shipped_gans.py, checked against the dataset when resolved) or a file."""
    if value and value != "shipped" and not Path(value).expanduser().is_file():
        raise ConfigError(f"{key}={value}: no such file; expected a diffinject GAN checkpoint, 'shipped' or empty "
                          f"(train in the run)")


def train_data(key: str, value: str) -> None:
    if value == "train":
        return
    from diffinject.data.registry import get_dataset_spec, normalize_ratio

    dataset, sep, ratio = value.partition("@")
    if not sep:
        raise ConfigError(f"{key} must be 'train' or 'DATASET@RATIO', got {value!r}")
    try:
        normalize_ratio(get_dataset_spec(dataset), ratio)
    except ConfigError as exc:
        raise ConfigError(f"{key}={value}: {exc}") from None


POSITIVE = Range(0, low_open=True)
COUNT = Range(1)                      # an integer >= 1
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
SEED = Range(0, 2**32 - 1)           # numpy seeds are non-negative 32-bit numbers
NUM_TIMESTEPS = 1000                  # diffusion timesteps of every model (t in [0, 999])
TIMESTEP = Range(0, NUM_TIMESTEPS - 1)
DDIM_STEPS = Range(1, NUM_TIMESTEPS)
GRID_STEPS = Range(2, NUM_TIMESTEPS)  # a timestep grid from 0 to 999 has both ends

# N_syn = round(conflict_ratio x |train|) synthetic pairs (docs/design.md 2.3, item 9); the paper uses 0.1
# (CMNIST, Corrupted CIFAR-10) and 0.6 (BFFHQ, Dogs & Cats). Above 1 a set is larger than the
# training split it debiases (a warning); above MAX_CONFLICT_RATIO it is taken for a slip (50 meant as 0.5)
# and refused.
MAX_CONFLICT_RATIO = 10
CONFLICT_RATIO = Range(0, MAX_CONFLICT_RATIO, low_open=True,
                       why="it queues N_syn = round(conflict_ratio x |train|) synthetic pairs; the paper uses 0.1 "
                           "to 0.6")
_warned: set[str] = set()


def warn_once(text: str) -> None:
    """One `warning:` line on stderr per process for each distinct text (a config is validated
    more than once)."""
    if text not in _warned:
        _warned.add(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)


def check_options(args: Any, rules: dict[str, Range]) -> None:
    """Command-line values (argparse dests, one value or a list) against ranges, named as --option."""
    for dest, rule in rules.items():
        values = getattr(args, dest)
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                rule.check(f"--{dest.replace('_', '-')}", value)


def parse_mask(text: str) -> tuple[float, float, float, float]:
    """'top,left,bottom,right' fractions in [0, 1] with top < bottom and left < right."""
    try:
        top, left, bottom, right = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"injection.mask must be 'top,left,bottom,right' fractions, got {text!r}") from None
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ConfigError(f"injection.mask {text!r} must satisfy 0 <= top < bottom <= 1 and 0 <= left < right <= 1")
    return top, left, bottom, right
