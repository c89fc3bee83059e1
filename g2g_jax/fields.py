"""Spec fields declared once: each config field's default, rule and one-line meaning together.

A spec dataclass (config.RunSpec, data.DataSpec, models.G2GNetSpec, ...) declares a config
field as `name: type = field(default, rule, meaning)` and checks itself in __post_init__
(`check(self)`), so the library's specs and the command line refuse the same values.
configs/default.py is built from these declarations (`section`), and `python -m
g2g_jax.config` lists them. A spec field without a rule is not a config field: it holds what
the parser resolved (a FC v1 width, the classes of the data).
"""

import dataclasses
import math
from typing import Any


class FieldError(ValueError):
  """A value a field does not allow: names the field, the value and what is allowed."""

  def __init__(self, name: str, value: Any, allowed: str):
    self.name, self.value, self.allowed = name, value, allowed
    super().__init__(f'{name} = {value!r}: {allowed}')


@dataclasses.dataclass(frozen=True)
class Int:
  lo: int | None = None
  hi: int | None = None

  def check(self, name: str, value):
    if isinstance(value, bool) or not isinstance(value, int):
      raise FieldError(name, value, 'must be an integer')
    if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
      bounds = f'>= {self.lo}' if self.hi is None else f'in [{self.lo}, {self.hi}]'
      raise FieldError(name, value, f'must be an integer {bounds}')
    return value


@dataclasses.dataclass(frozen=True)
class Float:
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False  # lo itself is not allowed

  def check(self, name: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
      raise FieldError(name, value, 'must be a finite number')
    if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
      hi = f' and <= {self.hi}' if self.hi is not None else ''
      raise FieldError(name, value, f'must be {">" if self.lo_open else ">="} {self.lo}{hi}')
    if self.hi is not None and value > self.hi:
      raise FieldError(name, value, f'must be in [{self.lo}, {self.hi}]')
    return float(value)


@dataclasses.dataclass(frozen=True)
class Choice:
  allowed: tuple

  def check(self, name: str, value):
    if value not in self.allowed:
      raise FieldError(name, value, f'must be one of {", ".join(repr(a) for a in self.allowed)}')
    return value


class Bool:
  def check(self, name: str, value):
    if not isinstance(value, bool):
      raise FieldError(name, value, 'must be True or False')
    return value


class Text:
  def check(self, name: str, value):
    if not isinstance(value, str):
      raise FieldError(name, value, 'must be a string')
    return value


def field(default, rule, meaning: str):
  """A config field of a spec: its default, the rule its values obey, and what it means."""
  return dataclasses.field(default=default, metadata={'rule': rule, 'meaning': meaning})


def config_fields(spec_class) -> list[dataclasses.Field]:
  """The spec's config fields (those with a rule), in declaration order."""
  return [f for f in dataclasses.fields(spec_class) if 'rule' in f.metadata]


def check(spec):
  """Checks every config field of a spec instance by its rule (and normalises ints to floats
  where a float is meant); a FieldError names the spec's class and the field."""
  for f in config_fields(spec):
    try:
      value = f.metadata['rule'].check(f.name, getattr(spec, f.name))
    except FieldError as e:
      raise FieldError(f'{type(spec).__name__}.{e.name}', e.value, e.allowed) from None
    object.__setattr__(spec, f.name, value)


def section(*spec_classes) -> dict:
  """{field: default} of the spec classes' config fields (a config section)."""
  return {f.name: f.default for cls in spec_classes for f in config_fields(cls)}


def check_section(values: dict, *spec_classes, prefix: str) -> dict:
  """A config section's values, each checked by its field's rule: a FieldError names
  `prefix + field` (config.model.hidden_width, say)."""
  out = {}
  for cls in spec_classes:
    for f in config_fields(cls):
      try:
        out[f.name] = f.metadata['rule'].check(f.name, values[f.name])
      except FieldError as e:
        raise FieldError(prefix + e.name, e.value, e.allowed) from None
  return out


def describe(spec_class, prefix: str = '') -> list[str]:
  """One line per config field: name, default and meaning."""
  return [f'{prefix}{f.name} = {f.default!r}  # {f.metadata["meaning"]}' for f in config_fields(spec_class)]
