"""argv -> Settings: one flag per setting, built from :class:`Settings`' fields, and ``--help``.

Every setting is a flag (``--store-url``) and a ``BRIDGE_*`` environment
variable (``BRIDGE_STORE_URL``); a flag wins over the variable, the variable
over the default. argparse reads the flags, pydantic-settings the environment,
and pydantic validates both at once, so that a bad value is reported the
same way from either: naming the flag or variable and the value, never a
traceback (exit 2). ``--help`` gives each setting's variable, default and
unit, and the subcommands.
"""

from __future__ import annotations

import argparse
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from bridge import __version__
from bridge.errors import ConfigError
from bridge.settings import ServerSources, Settings
from bridge.values import BYTES, SECONDS, Unit, describe

#: Short flags the issues name, for settings whose field names are longer.
ALIASES: Final = {"store_url": ("--store",)}
#: Settings that hold a URL (metavar only).
_URLS: Final = frozenset({"sse", "store_url", "public_url", "oauth_issuer", "oauth_jwks_url"})
USAGE: Final = """
  mcp-bridge (--config FILE | --stdio 'COMMAND ARGS' | --sse URL) [OPTIONS]
  mcp-bridge --check (--config FILE | ...) [OPTIONS]
  mcp-bridge sessions (list | show ID | delete ID) [--store-url URL]
  mcp-bridge api-key NAME
  mcp-bridge --version"""
DESCRIPTION: Final = """\
A Streamable HTTP front door for legacy HTTP+SSE, stdio and Streamable HTTP MCP servers.

commands:
  (none)          run the gateway until SIGINT or SIGTERM
  --check         validate and resolve the configuration (settings, server entries,
                  ${VAR}s, commands on PATH, URLs, API keys, the store), print what
                  would run; exit 0, or 2 with every problem
  sessions        list, show or delete the sessions the store holds
                  (mcp-bridge sessions --help)
  api-key NAME    print a new random API key and its BRIDGE_API_KEYS entry"""
EPILOG: Final = """\
List settings take A,B or a JSON list, as flags (repeatable) and in the environment.
Exit status: 0 stopped cleanly, 1 could not listen, 2 bad configuration."""
#: Width of a help paragraph (argparse indents it by 24 columns).
_HELP_WIDTH: Final = 54


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command line: the settings given as flags, and ``--check``."""

    flags: dict[str, Any]
    check: bool


def flag(name: str) -> str:
    """The flag of setting ``name``: ``store_url`` -> ``--store-url``."""
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    """The environment variable of setting ``name``: ``store_url`` -> ``BRIDGE_STORE_URL``."""
    return "BRIDGE_" + name.upper()


def unit_of(info: FieldInfo) -> Unit | None:
    """The setting's unit (:data:`bridge.settings.SECONDS`, ...), if it has one."""
    return next((m for m in info.metadata if isinstance(m, Unit)), None)


def _is_list(info: FieldInfo) -> bool:
    return typing.get_origin(info.annotation) is list


def _metavar(name: str, info: FieldInfo) -> str:
    unit = unit_of(info)
    if unit is not None:
        return unit.metavar
    annotation = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        return "{" + ",".join(typing.get_args(annotation)) + "}"
    if _is_list(info):
        return "A,B"
    if name in _URLS:
        return "URL"
    names: dict[Any, str] = {Path: "FILE", int: "N", SecretStr: "SECRET", float: "NUMBER"}
    return names.get(annotation, "TEXT")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _human(value: float, unit: Unit | None) -> str:
    shown = _num(value)
    if unit is BYTES and value >= 1024:
        for size, symbol in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
            if value % size == 0:
                return f"{shown} ({_num(value // size)} {symbol})"
        return shown
    if unit is SECONDS:
        for size, word in ((86400, "days"), (3600, "hours"), (60, "minutes")):
            if value >= size * 2 and value % size == 0:
                return f"{shown} s ({_num(value // size)} {word})"
        return f"{shown} s"
    return shown if unit is None else f"{shown} {unit.symbol}"


def default_text(info: FieldInfo) -> str:
    """The default of a setting as ``--help`` and ``--check`` show it."""
    value = info.get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, list):
        return ",".join(value) if value else "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _human(value, unit_of(info))
    return str(value)


def _help(name: str, info: FieldInfo) -> str:
    text = textwrap.fill(info.description or "", _HELP_WIDTH)
    return f"{text}\n{env_name(name)}; default: {default_text(info)}"


def build_parser() -> argparse.ArgumentParser:
    """The ``mcp-bridge`` parser: ``--check``, ``--version`` and one flag per setting."""
    parser = argparse.ArgumentParser(
        prog="mcp-bridge",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawTextHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"mcp-bridge {__version__}")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate and resolve everything, print what would run;\nexit 0, or 2",
    )
    group = parser.add_argument_group(
        "settings (each also a BRIDGE_* environment variable; a flag wins)"
    )
    for name, info in Settings.model_fields.items():
        group.add_argument(
            flag(name),
            *ALIASES.get(name, ()),
            dest=name,
            metavar=_metavar(name, info),
            help=_help(name, info),
            default=argparse.SUPPRESS,
            action="append" if _is_list(info) else "store",
        )
    return parser


def parse(argv: Sequence[str]) -> Command:
    """Parse ``argv`` (without the program name); unknown flags exit 2 with the usage."""
    values = vars(build_parser().parse_args(list(argv)))
    check = bool(values.pop("check", False))
    return Command(values, check)


def _problem(err: ErrorDetails, flags: dict[str, Any]) -> str:
    name = str(err["loc"][0]) if err["loc"] else ""
    info = Settings.model_fields.get(name)
    if info is None:  # a rule across settings (e.g. oauth_issuer needs oauth_jwks_url)
        return describe(err)
    if info.annotation in (SecretStr, SecretStr | None):
        err = {**err, "input": None}  # never echo a secret
    source = flag(name) if name in flags else env_name(name)
    return f"{source}: {describe(err)}"


def settings_from(flags: dict[str, Any]) -> Settings:
    """Settings from ``flags`` over ``BRIDGE_*`` variables over defaults.

    Raises:
        ConfigError: every bad value, one per line, each naming its flag or
            variable and the value.
    """
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise ConfigError("\n".join(_problem(err, flags) for err in exc.errors())) from None
    except SettingsError as exc:  # a value the environment source cannot decode
        raise ConfigError(str(exc)) from None


def sources_from(flags: dict[str, Any]) -> ServerSources:
    """Just ``--config``/``--stdio``/``--sse`` (for ``--check`` when other settings are bad).

    Raises:
        ConfigError: one of them is itself bad.
    """
    given = {k: v for k, v in flags.items() if k in ServerSources.model_fields}
    try:
        return ServerSources(**given)
    except (ValidationError, SettingsError) as exc:
        raise ConfigError(str(exc)) from None
