"""Frozen dataclass configurations: named presets and a JSON form.

A model's config is a frozen dataclass that also inherits `Config`; its class attribute
`PRESETS` maps a preset name (``"paper"``, ``"tiny"``, ...) to the fields that differ from
the defaults. Checkpoints store `to_dict()` so a checkpoint alone rebuilds its model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from typing import Any, ClassVar, TypeVar

from clipsonic.errors import ConfigError
from clipsonic.fileio import write_json_atomic

ConfigT = TypeVar("ConfigT", bound="Config")


class Config:
    """Mixin for frozen dataclasses: `preset`, `to_dict`/`from_dict`, `to_json`/`from_json`."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls: type[ConfigT], name: str, **overrides: Any) -> ConfigT:
        """The named preset, with `overrides` applied on top."""
        if name not in cls.PRESETS:
            choices = ", ".join(sorted(cls.PRESETS)) or "none"
            raise ConfigError(f"unknown {cls.__name__} preset {name!r} (choose from: {choices})")
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: tuples become lists, nested configs become dicts."""
        return {field.name: _to_plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        """Rebuild from `to_dict()` output; unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a mapping, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        values = {name: _from_plain(hints[name], value) for name, value in data.items()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"invalid {cls.__name__}: {error}") from None

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        return self.from_dict({**self.to_dict(), **changes})

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The JSON text; written atomically to `path` when one is given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_json_atomic(path, self.to_dict())
        return text

    @classmethod
    def from_json(cls: type[ConfigT], source: str | os.PathLike) -> ConfigT:
        """From a JSON file path, or from JSON text (anything starting with ``{``)."""
        if isinstance(source, str) and source.lstrip().startswith("{"):
            text, origin = source, "JSON text"
        else:
            origin = str(source)
            try:
                with open(source, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as error:
                raise ConfigError(f"{origin}: cannot read config ({error.strerror})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{origin}: not valid JSON ({error})") from None
        return cls.from_dict(data)


def read_config_source(source: str | os.PathLike | dict, what: str) -> tuple[dict[str, Any], str]:
    """An upstream config given as a JSON file path or as its parsed dict -> (the dict, a name for messages).

    Official checkpoints come with a JSON config (NVIDIA's config.json, LAION's
    prior_config.json) that embedding code often holds already parsed; both forms are accepted.
    Anything else is a ConfigError naming the type, before any file is touched.
    """
    if isinstance(source, dict):
        return source, f"the {what} given as a dict"
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"the {what} must be a path to a JSON file or its parsed dict, got {type(source).__name__}")
    try:
        with open(source, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise ConfigError(f"{source}: cannot read the {what} ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: the {what} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the {what} is not a JSON object")
    return data, str(source)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(item) for item in value]
    return value


def _from_plain(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # Optional[X]: convert with the first non-None member when the value is not None.
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return value if value is None or len(members) != 1 else _from_plain(members[0], value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], item) for item in value)
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value)
    return value
