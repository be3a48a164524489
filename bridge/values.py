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


def describe(error: ErrorDetails) -> str:
    """Pydantic's error as a person would say it, naming the value where it helps."""
    kind, value = error["type"], error.get("input")
    ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in error.get("ctx", {}).items()}
    shown = repr(value) if isinstance(value, str | int | float) else None
    plain = {
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
        "url_scheme": "is not an http:// or https:// URL",
        "url_type": "is not a URL (expected http://HOST[:PORT]/PATH)",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "literal_error": f"must be {ctx.get('expected')}",
        "string_pattern_mismatch": f"does not have the expected form ({ctx.get('pattern')})",
    }.get(kind)
    if plain is None:
        text = str(ctx["error"]) if kind == "value_error" and "error" in ctx else error["msg"]
        return text if shown is None or kind in ("value_error", "assertion_error") else (
            f"{shown}: {text}"
        )  # fmt: skip
    if shown is None or kind in ("missing", "extra_forbidden"):
        return plain
    return f"{shown} {plain}"
