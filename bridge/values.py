"""Typed values of the configuration: units, and pydantic's errors in plain words.

Shared by :mod:`bridge.settings` (the gateway's knobs) and :mod:`bridge.servers`
(the mcpServers file). A setting's unit rides in its type's metadata
(``Seconds``, ``Bytes``), so ``--help`` can show it (:mod:`bridge.options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from pydantic import Field
from pydantic_core import ErrorDetails


@dataclass(frozen=True, slots=True)
class Unit:
    """A setting's unit, for ``--help`` (``METAVAR``) and its default (``30 s``)."""

    metavar: str
    symbol: str


SECONDS: Final = Unit("SECONDS", "s")
BYTES: Final = Unit("BYTES", "bytes")
MILLISECONDS: Final = Unit("MS", "ms")

Seconds = Annotated[float, Field(gt=0), SECONDS]
#: Seconds where 0 means "none" or "never" (each setting says which).
SecondsOrZero = Annotated[float, Field(ge=0), SECONDS]
Bytes = Annotated[int, Field(gt=0), BYTES]
Count = Annotated[int, Field(gt=0)]


#: Pydantic's error types in plain words; ``{gt}`` and the like come from the error's context.
_PLAIN: Final = {
    "int_parsing": "is not a whole number",
    "int_type": "is not a whole number",
    "int_from_float": "is not a whole number",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "is not true or false",
    "string_type": "is not a string",
    "list_type": "is not a list",
    "tuple_type": "is not a list",
    "dict_type": "is not an object of names and values",
    "missing": "is required",
    "extra_forbidden": "is not a field this gateway knows",
    "string_too_short": "is empty",
    "url_parsing": "is not a URL (expected http://HOST[:PORT]/PATH)",
    "url_type": "is not a URL (expected http://HOST[:PORT]/PATH)",
    "url_scheme": "is not an http:// or https:// URL",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be {expected}",
    "string_pattern_mismatch": "does not have the expected form ({pattern})",
}
#: Error types whose text already says what is wrong, without the value.
_NO_VALUE: Final = frozenset({"missing", "extra_forbidden", "value_error", "assertion_error"})


def describe(error: ErrorDetails) -> str:
    """Pydantic's error as a person would say it, naming the value where it helps.

    ``'http' is not a whole number`` rather than "Input should be a valid
    integer, unable to parse string as an integer"; a validator's own message
    (``value_error``) as it is.
    """
    kind, value = error["type"], error.get("input")
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
    if kind in _PLAIN:
        try:
            text = _PLAIN[kind].format(**ctx)
        except KeyError:  # a context this pydantic version does not give
            text = error["msg"]
    elif kind == "value_error" and "error" in ctx:
        text = str(ctx["error"])
    else:
        text = error["msg"]
    if kind in _NO_VALUE or not isinstance(value, str | int | float):
        return text
    return f"{value!r} {text}" if kind in _PLAIN else f"{value!r}: {text}"
