"""Parsing of string options into enums, with a suggestion for typos."""

from __future__ import annotations

import difflib
from enum import Enum
from typing import TypeVar

from medmamba.errors import ConfigError

E = TypeVar("E", bound=Enum)


def parse_enum(enum_type: type[E], value: str | E, what: str) -> E:
    """Return the member of ``enum_type`` whose value is ``value``.

    Raises ConfigError listing the allowed values and the closest one, e.g.
    ``unknown network 'umamba_bto' (did you mean 'umamba_bot'?); allowed: ...``.
    """
    if isinstance(value, enum_type):
        return value
    allowed = [str(member.value) for member in enum_type]
    if value in allowed:
        return enum_type(value)
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown {what} '{value}'{hint}; allowed: {', '.join(allowed)}")


def suggest(value: str, allowed: list[str], what: str) -> ConfigError:
    """Build the same error for a plain list of names (registries, configurations)."""
    close = difflib.get_close_matches(value, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {what} '{value}'{hint}; allowed: {', '.join(sorted(allowed))}")
