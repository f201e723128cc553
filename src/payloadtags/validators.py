"""attrs validators shared by the option records (registry settings, cleanup and leader election)."""

from __future__ import annotations

from typing import Any

import attrs


def positive(_instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    """A count or a duration that must be above zero; the message names the field."""
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


__all__ = ["positive"]
