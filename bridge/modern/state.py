"""``requestState``: the gateway's token for a request waiting on its client's input.

spec 2026-07-28 basic/patterns/mrtr §Server Requirements 4-5: ``requestState``
is attacker-controlled input. The gateway's token names a held upstream call
(the *hold*), so it must not be forged, moved to another caller or request,
or kept forever. It is ``base64url(claims) "." base64url(HMAC-SHA256(claims))``
with claims:

- ``h``: the hold's id (128 random bits) and ``r``: the round it was issued for;
  a round answered is gone, so a replayed token finds nothing to continue;
- ``p``: a digest of the authenticated principal (none when auth is off);
- ``d``: the digest of what the request asks (method and params, but
  ``_meta``, ``inputResponses`` and ``requestState``);
- ``e``: when it expires (Unix seconds).

Any failure is one refusal, -32602 with a reason, before anything goes upstream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Final

from bridge.errors import InvalidParams

#: Longest token accepted (bytes); a real one is about 250.
MAX_TOKEN: Final = 1024


class StateRejected(InvalidParams):
    """A ``requestState`` that is forged, altered, expired, replayed or someone else's."""


@dataclass(frozen=True, slots=True)
class Claims:
    hold: str
    round: int
    principal: str
    digest: str
    expires: float


def principal_digest(principal: str | None) -> str:
    return hashlib.sha256((principal or "").encode()).hexdigest()[:32]


def new_hold_id() -> str:
    return secrets.token_urlsafe(16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(claims: Claims, key: bytes) -> str:
    """The token for ``claims`` under ``key``."""
    body = json.dumps(
        {"h": claims.hold, "r": claims.round, "p": claims.principal,
         "d": claims.digest, "e": round(claims.expires, 3)},
        separators=(",", ":"),
    ).encode()  # fmt: skip
    tag = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(tag)}"


def unseal(token: object, key: bytes, *, principal: str | None, digest: str, now: float) -> Claims:
    """The claims of a token presented by ``principal`` on a request asking ``digest``.

    Raises:
        StateRejected: not a token of this gateway's, altered, expired, of
            another principal, or of another request.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN or token.count(".") != 1:
        raise StateRejected("requestState is not one this gateway issued")
    body_text, tag_text = token.split(".")
    try:
        body, tag = _unb64(body_text), _unb64(tag_text)
    except (binascii.Error, ValueError):
        raise StateRejected("requestState is not one this gateway issued") from None
    if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()):
        raise StateRejected("requestState integrity check failed")
    fields = json.loads(body)
    claims = Claims(fields["h"], fields["r"], fields["p"], fields["d"], fields["e"])
    if not hmac.compare_digest(claims.principal, principal_digest(principal)):
        raise StateRejected("requestState was issued to another caller")
    if claims.digest != digest:
        raise StateRejected("requestState belongs to another request (method or params differ)")
    if claims.expires < now:
        raise StateRejected("requestState expired; send the request again without it")
    return claims
