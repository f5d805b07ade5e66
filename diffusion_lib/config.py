"""Configs written once: a dataclass base that turns itself into a plain dict (for a
checkpoint's JSON manifest) and back.

    @dataclass
    class UNetConfig(Config):
        channel_mults: tuple = (1, 2, 2)
        ...

    UNetConfig.from_dict(json.loads(text)) == config  # lists back to tuples, nested
                                                      # configs back to dataclasses

JSON has no tuples, so `from_dict` restores them from the type hints, as it restores
nested configs; an unknown key is a ValueError that names the known ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing


def _restore(hint, value):
    """value (as JSON gave it back) as the type `hint` says."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. int | None
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _restore(options[0], value) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value)
    if (hint is tuple or origin is tuple) and isinstance(value, (list, tuple)):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if len(args) == 1 else None
        return tuple(_restore(item, v) if item else v for v in value)
    return value


@dataclasses.dataclass
class Config:
    """Base of the library's configs (subclasses are dataclasses)."""

    def to_dict(self) -> dict:
        """A plain dict (nested configs as dicts), ready for json.dumps."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """The config that to_dict gave `d` for (after a JSON round trip)."""
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; "
                f"its fields are {sorted(names)}"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{k: _restore(hints[k], v) for k, v in d.items()})
