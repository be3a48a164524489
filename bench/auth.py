"""What front-door authentication costs per request (issue #5).

Times :meth:`authenticate` of each authenticator on one request, in process:
no auth, API keys (1 and 100 configured), and OAuth (an RS256 JWT checked
against a JWKS fetched once from a local server and then cached). Prints the
median microseconds over ``--rounds`` rounds of ``--calls`` calls each, and
each as a multiple of the no-auth call, so noisy machines compare ratios.

    python bench/auth.py --rounds 5 --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import jwt
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.auth import (
    ApiKeyAuth,
    Authenticator,
    Challenge,
    NoAuth,
    OAuthConfig,
    OAuthResourceServer,
    parse_api_keys,
)

PUBLIC = "https://mcp.example.com"
NO_HINT = Challenge(None, ())


async def jwks_server(key: rsa.RSAPrivateKey) -> tuple[web.AppRunner, str]:
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1"}

    async def serve(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/jwks.json"


async def per_call(auth: Authenticator, request: web.Request, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await auth.authenticate(request)
    return (time.perf_counter() - started) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    runner, jwks_url = await jwks_server(key)
    now = int(time.time())
    token = jwt.encode(
        {"iss": "https://issuer.test", "sub": "u", "aud": f"{PUBLIC}/mcp", "exp": now + 3600},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    config = OAuthConfig(
        issuer="https://issuer.test",
        jwks_url=jwks_url,
        audiences=(),
        scopes=(),
        algorithms=("RS256",),
        leeway=30,
        jwks_timeout=5,
        public_url=PUBLIC,
    )
    many = ",".join(f"k{n}:tok-{n}" for n in range(100))
    cases: dict[str, tuple[Authenticator, str]] = {
        "none": (NoAuth(), ""),
        "api key (1 configured)": (ApiKeyAuth(parse_api_keys("a:tok-a", "x"), NO_HINT), "tok-a"),
        "api key (100 configured)": (ApiKeyAuth(parse_api_keys(many, "x"), NO_HINT), "tok-99"),
        "oauth RS256 JWT": (OAuthResourceServer(config, NO_HINT), token),
    }  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (auth, bearer) in cases.items():
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            request = make_mocked_request("POST", "/mcp", headers=headers)
            results[name].append(await per_call(auth, request, args.calls))
    await runner.cleanup()
    base = statistics.median(results["api key (1 configured)"])
    print(f"median of {args.rounds} rounds x {args.calls} calls")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:28s} {median:9.1f} us/request  x{median / base:7.2f} of one API key")


if __name__ == "__main__":
    asyncio.run(main())
