"""Whether to trace, and how ids appear in traces; no OpenTelemetry import here.

Tracing is off unless an OTLP endpoint is configured: ``BRIDGE_OTLP_ENDPOINT``,
or OpenTelemetry's own ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (``OTEL_SDK_DISABLED=true`` turns it
off again). Off, :mod:`bridge.otel` is never imported: no middleware, no
wrapped connection, no OpenTelemetry module loaded, nothing on the hot path.

Session ids are bearer-like (whoever has one can use the session), so a trace
never carries one: :func:`id_hash` stands in for it, enough to correlate the
spans of one session and useless to resume it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Final

from bridge.settings import Settings

#: OpenTelemetry's variables that name a collector (OTLP exporter specification).
OTEL_ENDPOINT_VARS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
#: Hex digits of SHA-256 kept: 64 bits, enough to tell sessions apart in a trace store.
HASH_DIGITS: Final = 16


def wanted(settings: Settings, environ: Mapping[str, str]) -> bool:
    """True when an OTLP endpoint is configured and the SDK is not disabled."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(settings.otlp_endpoint) or any(environ.get(v) for v in OTEL_ENDPOINT_VARS)


def id_hash(value: str) -> str:
    """What a trace shows for a session id: 16 hex digits of its SHA-256."""
    return hashlib.sha256(value.encode()).hexdigest()[:HASH_DIGITS]


def hide(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` (session ids) replaced by its hash."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, id_hash(secret))
    return text
