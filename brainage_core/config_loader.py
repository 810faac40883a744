"""The one loader of dataclass configs: plain values (YAML, JSON, overrides) in, typed dataclasses out.

:func:`dataclass_from_dict` reads the run config (:mod:`brainage_core.config`), the cohort
settings and the synthetic phantom's :class:`~brainage_core.cohorts.synthetic.SynthConfig`. It
converts every value to its field's declared type and lists every problem (unknown key, wrong
type, missing required field, a section's own check) rather than stopping at the first;
:class:`ConfigError` carries that list. This module imports no torch, so the phantom's worker
processes stay light.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any

__all__ = ["ConfigError", "dataclass_from_dict"]


class ConfigError(ValueError):
    """A config (a run's, the cohort's, the synthetic phantom's) has problems; ``problems`` lists every one.

    Each problem starts with the field's dotted name.
    """

    def __init__(self, problems: list[str], source: str = "the run config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a YAML value to the field's declared type; ValueError names the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], name)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: must be a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, name) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: must be a mapping, got {value!r}")
        if not args:
            return dict(value)
        key_type, value_type = args
        return {_coerce(k, key_type, name): _coerce(v, value_type, f"{name}.{k}") for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: must be true or false, got {value!r}")
        return value
    if annotation in (int, float, str):
        if (
            value is None
            or isinstance(value, (bool, list, dict))
            or (annotation is not str and isinstance(value, str) and not _is_number(value))
        ):
            raise ValueError(
                f"{name}: must be {'an integer' if annotation is int else 'a number' if annotation is float else 'a string'}, got {value!r}"
            )
        try:
            converted = annotation(value)
        except (TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"{name}: must be {annotation.__name__}, got {value!r}") from error
        if annotation is int and isinstance(value, float) and value != converted:
            raise ValueError(f"{name}: must be an integer, got {value!r}")
        if annotation is float and not math.isfinite(converted):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
        return converted
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def dataclass_from_dict(
    cls: type, values: dict[str, Any], problems: list[str], prefix: str = "", base: Any = None
) -> Any:
    """Build dataclass ``cls`` from ``values``, appending every problem to ``problems``.

    A field missing from ``values`` keeps its value in ``base`` (an instance of ``cls``) or, without
    one, its default. A field that is a dataclass is a section, read recursively (keys not given
    keep their defaults); a mapping of sections (``dict[str, Section]``, e.g. the phantom's
    ``groups``) merges each entry given into the default entry of the same name, and the other
    entries keep their defaults. Any other value is converted to the field's declared type; a bad
    value is recorded and the field keeps its default.

    Args:
        cls: the dataclass.
        values: nested plain values (from YAML, JSON or overrides).
        problems: every problem is appended here, starting with the field's dotted name.
        prefix: dotted name of ``cls`` within the whole config (``""`` at the top).
        base: the instance whose values stand in for missing fields (default: the defaults).

    Returns:
        The instance; when it cannot be built (its problems are recorded), ``base``, else the
        defaults, or ``None`` where ``cls`` has required fields.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    dotted = f"{prefix}." if prefix else ""
    where = f"section {prefix!r}" if prefix else "the config"
    for key in sorted(set(values) - set(names), key=str):
        problems.append(f"{dotted}{key}: unknown key in {where}; valid keys: {', '.join(names)}")
    kwargs = {f.name: copy.deepcopy(getattr(base, f.name)) for f in fields} if base is not None else {}
    for f in fields:
        if f.name not in values:
            continue
        name, value, annotation = dotted + f.name, values[f.name], hints[f.name]
        section = _section_type(annotation)
        entry_type = _section_type(typing.get_args(annotation)[1]) if typing.get_origin(annotation) is dict else None
        if section is not None:
            if not isinstance(value, dict):
                problems.append(f"{name}: must be a section (a mapping of keys), got {value!r}")
                continue
            built = dataclass_from_dict(section, value, problems, name, kwargs.get(f.name))
        elif entry_type is not None:
            defaults = kwargs[f.name] if f.name in kwargs else _field_default(f)
            built = _sections_from_dict(
                annotation, value, {} if defaults is dataclasses.MISSING else defaults, problems, name
            )
        else:
            try:
                kwargs[f.name] = _coerce(value, annotation, name)  # None too: it may replace a default
            except ValueError as error:
                problems.append(str(error))
            continue
        if built is not None:
            kwargs[f.name] = built
    required = [f.name for f in fields if _field_default(f) is dataclasses.MISSING]
    for key in required:
        if key not in values and key not in kwargs:
            problems.append(f"{dotted}{key}: missing from {where}; it has no default, give a value")
    if all(key in kwargs for key in required):
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as error:  # a section's own __post_init__ checks
            problems.append(f"{prefix or 'config'}: {error}")
    if base is not None:
        return base
    return None if required else cls()


def _section_type(annotation: Any) -> type | None:
    """The dataclass an annotation names, or ``None`` when it names something else."""
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (a fresh one from its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _sections_from_dict(
    annotation: Any, values: Any, defaults: dict[Any, Any], problems: list[str], name: str
) -> dict[Any, Any] | None:
    """A mapping of sections (``dict[K, Section]``): each entry given is merged into its default."""
    if not isinstance(values, dict):
        problems.append(f"{name}: must be a mapping of sections, got {values!r}")
        return None
    key_type, entry_type = typing.get_args(annotation)
    entries = dict(defaults)
    for raw_key, entry in values.items():
        try:
            key = _coerce(raw_key, key_type, name)
        except ValueError as error:
            problems.append(str(error))
            continue
        if not isinstance(entry, dict):
            problems.append(f"{name}.{key}: must be a section (a mapping of keys), got {entry!r}")
            continue
        built = dataclass_from_dict(entry_type, entry, problems, f"{name}.{key}", defaults.get(key))
        if built is not None:
            entries[key] = built
    return entries
