"""Front-door authentication: API keys and OAuth 2.1 resource-server mode.

spec-notes §1.15 (2025-11-25 authorization) and §1.16 (session hijacking):

- Credentials come as ``Authorization: Bearer <token>`` on every request,
  never in the query string. Missing or wrong: 401 with ``WWW-Authenticate``
  (RFC 6750 §3); a valid token without a required scope: 403 with
  ``error="insufficient_scope"``.
- API keys are kept as SHA-256 digests and compared in constant time
  (:func:`hmac.compare_digest` against every key, no early exit), so neither
  the config nor timing reveals a key.
- OAuth mode validates JWT access tokens with PyJWT against the configured
  issuer's JWKS: signature, ``iss``, ``aud`` (the token must be minted for
  this gateway: RFC 8707 / spec §Token Audience Binding), ``exp``/``nbf``,
  and the required scopes. The 401 names the RFC 9728 protected-resource
  metadata URL, which :func:`protected_resource_metadata` serves.
- Every authenticator returns a *principal*, a stable string naming who
  sent the request (``key:NAME``, ``oauth:ISSUER#SUBJECT`` for a user,
  ``oauth:ISSUER#client:CLIENT_ID`` for a token without ``sub``; see
  :func:`oauth_subject`). Sessions are
  bound to it (:class:`bridge.hub.SessionHub`): another principal's session
  id gets the same 404 as an unknown one (spec-notes §1.16).

The client's own ``Authorization`` is never forwarded upstream (token
passthrough is forbidden, spec §Access Token Privilege Restriction): upstream
credentials come from each server's ``headers`` / ``env`` config.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import jwt
import structlog
from aiohttp import web

from bridge import tasks
from bridge.errors import AuthServerDown, ConfigError, InsufficientScope, Unauthorized
from bridge.settings import Settings

log = structlog.get_logger("bridge.auth")

#: RFC 9728 §3: the well-known path segment inserted before the resource's path.
METADATA_PATH: Final = "/.well-known/oauth-protected-resource"
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
#: The ``alg`` prefixes that fit each JWK ``kty`` (RFC 7518 §3.1, RFC 8037).
_ALG_PREFIXES: Final = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA", "Ed"), "oct": ("HS",)}
#: An unknown ``kid`` refetches the JWKS at most this often (seconds), so
#: random kids cannot turn the gateway into a flood against the issuer.
JWKS_MIN_REFRESH: Final = 30.0


class Authenticator(Protocol):
    async def authenticate(self, request: web.Request) -> str | None:
        """The request's principal, or None when authentication is off.

        Raises:
            Unauthorized: no credentials, or wrong ones (401).
            InsufficientScope: a valid token lacks a required scope (403).
            AuthServerDown: the issuer's keys cannot be fetched (503; not the client's fault).
        """


class NoAuth:
    """Authentication off: every request has the principal None."""

    async def authenticate(self, request: web.Request) -> str | None:
        return None


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None if absent or of another scheme."""
    match = _BEARER.match(request.headers.get("Authorization", ""))
    return match.group(1) if match else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes  # SHA-256 of the token


def parse_api_keys(text: str, source: str) -> list[ApiKey]:
    """Keys from ``NAME:TOKEN`` or ``NAME:sha256:HEX`` entries, one per line or comma.

    Blank entries and lines starting with ``#`` are skipped.

    Raises:
        ConfigError: an entry without a name or token, or a bad digest (names
            ``source`` and the entry's position, never the token).
    """
    keys = []
    entries = [e.strip() for line in text.splitlines() for e in line.split(",")]
    for position, entry in enumerate(entries, 1):
        if not entry or entry.startswith("#"):
            continue
        name, _, token = entry.partition(":")
        if not name.strip() or not token:
            raise ConfigError(f"{source}: API key entry {position} is not NAME:TOKEN")
        if token.startswith("sha256:"):
            try:
                digest = bytes.fromhex(token.removeprefix("sha256:"))
            except ValueError:
                digest = b""
            if len(digest) != 32:
                raise ConfigError(f"{source}: API key {name!r} has a bad sha256 digest")
        else:
            digest = _digest(token)
        keys.append(ApiKey(name.strip(), digest))
    return keys


class Challenge:
    """Builds ``WWW-Authenticate`` values (RFC 6750 §3, RFC 9728 §5.1)."""

    def __init__(self, metadata_url: Callable[[web.Request], str] | None, scopes: Sequence[str]):
        self._metadata_url = metadata_url
        self._scope = " ".join(scopes)

    def header(self, request: web.Request, error: str | None = None, description: str = "") -> str:
        params = [] if self._metadata_url else ['realm="mcp-bridge"']
        if self._metadata_url is not None:
            params.append(f'resource_metadata="{self._metadata_url(request)}"')
        if self._scope:
            params.append(f'scope="{self._scope}"')
        if error:
            params.append(f'error="{error}"')
            if description:
                params.append(f'error_description="{_quote(description)}"')
        return "Bearer " + ", ".join(params)

    def unauthorized(self, request: web.Request, description: str, token: bool) -> Unauthorized:
        error = "invalid_token" if token else None
        value = self.header(request, error, description if token else "")
        return Unauthorized(description, headers={"WWW-Authenticate": value})


def _quote(text: str) -> str:
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:200]


class ApiKeyAuth:
    """Bearer API keys (``BRIDGE_API_KEYS`` / ``BRIDGE_API_KEYS_FILE``)."""

    def __init__(self, keys: Iterable[ApiKey], challenge: Challenge) -> None:
        self._keys = tuple(keys)
        self._challenge = challenge

    def match(self, token: str) -> str | None:
        """The principal ``key:NAME`` of ``token``, or None; constant time in the key set."""
        digest, found = _digest(token), None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key.name
        return None if found is None else f"key:{found}"

    async def authenticate(self, request: web.Request) -> str | None:
        token = bearer_token(request)
        if token is None:
            raise self._challenge.unauthorized(request, "missing bearer token", token=False)
        principal = self.match(token)
        if principal is None:
            raise self._challenge.unauthorized(request, "unknown API key", token=True)
        return principal


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """See :class:`bridge.settings.Settings` ``oauth_*``; seconds."""

    issuer: str
    jwks_url: str
    audiences: tuple[str, ...]  # empty: the endpoint's resource URL or the public URL
    scopes: tuple[str, ...]
    algorithms: tuple[str, ...]
    leeway: float
    jwks_timeout: float
    public_url: str
    jwks_failure_ttl: float = 10.0


class OAuthResourceServer:
    """Validates JWT access tokens (spec 2025-11-25 authorization §Access Token Usage)."""

    def __init__(self, config: OAuthConfig, challenge: Challenge) -> None:
        self._config = config
        self._challenge = challenge
        self._jwks = jwt.PyJWKClient(
            config.jwks_url, cache_keys=True, lifespan=300, timeout=config.jwks_timeout
        )
        self._last_refresh = -JWKS_MIN_REFRESH
        # PyJWKClient blocks (urllib): it runs on a thread of its own, never on
        # the loop's default executor, which aiohttp's DNS lookups share (issue #15).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-jwks")
        self._fetching: asyncio.Future[list[jwt.PyJWK]] | None = None  # at most one
        self._failed_until = 0.0  # monotonic: until then a failed fetch is not retried
        self.fetches = 0  # JWKS fetches started (for tests and logs)

    async def authenticate(self, request: web.Request) -> str | None:
        token = bearer_token(request)
        if token is None:
            raise self._challenge.unauthorized(request, "missing bearer token", token=False)
        claims = await self.validate(token, request)
        granted = _scopes(claims)
        missing = [s for s in self._config.scopes if s not in granted]
        if missing:
            value = self._challenge.header(request, "insufficient_scope", "missing scope")
            raise InsufficientScope(
                f"token lacks scope {' '.join(missing)}", headers={"WWW-Authenticate": value}
            )
        subject = oauth_subject(claims)
        if subject is None:
            raise self._challenge.unauthorized(request, "token names no subject", token=True)
        return f"oauth:{claims['iss']}#{subject}"

    async def validate(self, token: str, request: web.Request) -> dict[str, Any]:
        """The token's claims once signature, issuer, audience and times check out.

        Raises:
            Unauthorized: any check fails, an ``alg`` that does not fit the key
                its ``kid`` names included (401, ``error="invalid_token"``).
            AuthServerDown: the JWKS cannot be fetched (503).
        """
        try:
            key = await self._signing_key(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(self._config.algorithms),
                audience=list(self.audiences(request)),
                issuer=self._config.issuer,
                leeway=self._config.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("jwks_unavailable", url=self._config.jwks_url, error=str(exc))
            raise AuthServerDown("authorization server keys unavailable") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError, jwt.InvalidKeyError) as exc:
            raise self._challenge.unauthorized(request, _reason(exc), token=True) from exc
        return claims

    async def _signing_key(self, token: str) -> Any:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = self._cached_keys()
        if keys is None:
            keys = await self._fetch(refresh=False)
        found = self._jwks.match_kid(keys, kid) if kid else (keys[0] if len(keys) == 1 else None)
        now = time.monotonic()
        if found is None and now - self._last_refresh >= JWKS_MIN_REFRESH:
            self._last_refresh = now
            keys = await self._fetch(refresh=True)
            found = self._jwks.match_kid(keys, kid) if kid else None
        if found is None:
            raise jwt.PyJWKClientError("no signing key matches the token")
        alg = jwt.get_unverified_header(token).get("alg")
        if not isinstance(alg, str) or not alg.startswith(
            _ALG_PREFIXES.get(found.key_type or "", ())
        ):
            # PyJWT would hand an RSA key to the EC verifier (a TypeError, a 500).
            raise jwt.InvalidAlgorithmError("the token's alg does not fit its key")
        return found.key

    async def _fetch(self, *, refresh: bool) -> list[jwt.PyJWK]:
        """The issuer's signing keys, fetched once however many requests ask at once.

        Concurrent callers share the fetch in flight; a fetch that failed is
        not retried for ``jwks_failure_ttl`` seconds, during which callers get
        503 with ``Retry-After`` at once. A fetch takes at most ``jwks_timeout``.

        Raises:
            AuthServerDown: the JWKS could not be fetched (now, or recently).
        """
        wait = self._failed_until - time.monotonic()
        if wait > 0:
            raise _jwks_down(wait)
        if self._fetching is None:
            self.fetches += 1
            fetching = tasks.spawn(self._fetch_once(refresh), name="jwks-fetch", awaited=True)
            self._fetching = fetching
            fetching.add_done_callback(self._fetched)
        return await asyncio.shield(self._fetching)

    def _fetched(self, fetching: asyncio.Future[list[jwt.PyJWK]]) -> None:
        if self._fetching is fetching:
            self._fetching = None

    async def _fetch_once(self, refresh: bool) -> list[jwt.PyJWK]:
        loop = asyncio.get_running_loop()
        timeout = self._config.jwks_timeout
        try:
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(
                    self._executor, self._jwks.get_signing_keys, refresh
                )
        except (TimeoutError, jwt.PyJWKClientConnectionError) as exc:
            error = f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else exc
            self._failed_until = time.monotonic() + self._config.jwks_failure_ttl
            log.warning("jwks_unavailable", url=self._config.jwks_url, error=str(error))
            raise _jwks_down(self._config.jwks_failure_ttl) from exc

    def _cached_keys(self) -> list[jwt.PyJWK] | None:
        """The signing keys of a fresh cached JWKS, without a thread hop; None if stale."""
        cache = self._jwks.jwk_set_cache
        jwk_set = cache.get() if cache is not None else None
        if jwk_set is None:
            return None
        return [k for k in jwk_set.keys if k.public_key_use in ("sig", None) and k.key_id]

    def audiences(self, request: web.Request) -> tuple[str, ...]:
        """Accepted ``aud`` values: configured, else this endpoint's and the gateway's URL."""
        if self._config.audiences:
            return self._config.audiences
        base = self._config.public_url.rstrip("/")
        return (resource_url(self._config.public_url, request.path), base, base + "/")


def _jwks_down(retry_after: float) -> AuthServerDown:
    return AuthServerDown(
        "authorization server keys unavailable",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def oauth_subject(claims: dict[str, Any]) -> str | None:
    """Who a token speaks for, after ``oauth:ISSUER#``; None if it names nobody.

    A user is its ``sub``. A token without ``sub`` (client credentials) is its
    client, ``client:`` + ``client_id`` (else ``azp``). A ``sub`` that itself
    starts with ``client:`` or ``sub:`` gets ``sub:`` in front, so that no
    user is ever the same principal as a client (issue #15), and no two
    subjects are the same principal.
    """
    sub = claims.get("sub")
    if isinstance(sub, str) and sub:
        return f"sub:{sub}" if sub.startswith(("client:", "sub:")) else sub
    client = claims.get("client_id") or claims.get("azp")
    if isinstance(client, str) and client:
        return f"client:{client}"
    return None


def _scopes(claims: dict[str, Any]) -> set[str]:
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, str):
        return set(scope.split())
    return {s for s in scope if isinstance(s, str)} if isinstance(scope, list) else set()


def _reason(exc: Exception) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "token audience is not this server"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer is not trusted"
    return "invalid token"


class Chain:
    """API keys first (cheap), then OAuth tokens; the first that recognises the token wins."""

    def __init__(self, keys: ApiKeyAuth, oauth: OAuthResourceServer) -> None:
        self._keys = keys
        self._oauth = oauth

    async def authenticate(self, request: web.Request) -> str | None:
        token = bearer_token(request)
        if token is not None and (principal := self._keys.match(token)) is not None:
            return principal
        return await self._oauth.authenticate(request)


# -- RFC 9728 protected-resource metadata --------------------------------------


def legacy_resource_path(path: str) -> str:
    """The resource of a request path: a legacy ``.../messages/`` POST's is ``.../sse``."""
    return path[: -len("/messages/")] + "/sse" if path.endswith("/messages/") else path


def resource_url(public_url: str, path: str) -> str:
    """The resource identifier of the endpoint at ``path`` (RFC 8707 §2: no fragment)."""
    return public_url.rstrip("/") + legacy_resource_path(path)


def metadata_url(public_url: str, path: str) -> str:
    """Where the metadata of the endpoint at ``path`` lives (RFC 9728 §3.1)."""
    parts = urlsplit(public_url)
    return f"{parts.scheme}://{parts.netloc}{METADATA_PATH}{parts.path.rstrip('/')}{path}"


class ProtectedResource:
    """Serves ``/.well-known/oauth-protected-resource[/<path>]`` (RFC 9728 §3)."""

    def __init__(self, config: OAuthConfig, is_endpoint: Callable[[str], bool]) -> None:
        self._config = config
        self._is_endpoint = is_endpoint
        self._prefix = urlsplit(config.public_url).path.rstrip("/")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(METADATA_PATH, self.serve),
            web.get(METADATA_PATH + "/{path:.*}", self.serve),
        ]

    def metadata_url(self, request: web.Request) -> str:
        return metadata_url(self._config.public_url, legacy_resource_path(request.path))

    async def serve(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info.get("path", "") if "path" in request.match_info else ""
        if path and self._prefix and path.startswith(self._prefix + "/"):
            path = path[len(self._prefix) :]
        if path and not self._is_endpoint(path):
            raise web.HTTPNotFound(reason="no MCP endpoint at that path")
        public = self._config.public_url
        body: dict[str, Any] = {
            "resource": resource_url(public, path) if path else public,
            "authorization_servers": [self._config.issuer],
            "bearer_methods_supported": ["header"],
            "resource_name": "mcp-bridge",
        }
        if self._config.scopes:
            body["scopes_supported"] = list(self._config.scopes)
        return web.json_response(body, headers={"Cache-Control": "max-age=300"})


def load_api_keys(inline: str | None, path: Path | None) -> list[ApiKey]:
    """Keys from ``BRIDGE_API_KEYS`` and ``BRIDGE_API_KEYS_FILE``.

    Raises:
        ConfigError: an unreadable file or a bad entry.
    """
    keys = parse_api_keys(inline, "BRIDGE_API_KEYS") if inline else []
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read API keys: {exc.strerror}") from exc
        keys += parse_api_keys(text, str(path))
    return keys


def from_settings(
    settings: Settings, is_endpoint: Callable[[str], bool]
) -> tuple[Authenticator, ProtectedResource | None]:
    """The authenticator ``settings`` ask for, and the metadata routes of OAuth mode.

    Raises:
        ConfigError: unreadable or malformed API keys.
    """
    secret = settings.api_keys.get_secret_value() if settings.api_keys else None
    keys = load_api_keys(secret, settings.api_keys_file)
    if (secret or settings.api_keys_file) and not keys:
        raise ConfigError(f"{settings.api_keys_file or 'BRIDGE_API_KEYS'}: no API keys found")
    if settings.oauth_issuer is None:
        return (ApiKeyAuth(keys, Challenge(None, ())) if keys else NoAuth()), None
    assert settings.oauth_jwks_url is not None  # validated by Settings
    assert settings.public_url is not None
    config = OAuthConfig(
        issuer=settings.oauth_issuer,
        jwks_url=settings.oauth_jwks_url,
        audiences=tuple(settings.oauth_audience),
        scopes=tuple(settings.oauth_scopes),
        algorithms=tuple(settings.oauth_algorithms),
        leeway=settings.oauth_leeway,
        jwks_timeout=settings.oauth_jwks_timeout,
        public_url=settings.public_url,
        jwks_failure_ttl=settings.oauth_jwks_failure_ttl,
    )
    metadata = ProtectedResource(config, is_endpoint)
    challenge = Challenge(metadata.metadata_url, config.scopes)
    oauth = OAuthResourceServer(config, challenge)
    if not keys:
        return oauth, metadata
    return Chain(ApiKeyAuth(keys, challenge), oauth), metadata
