"""``mcp-bridge sessions list|show|delete``: see and evict what the store holds.

Talks to the store directly (``--store-url`` or ``BRIDGE_STORE_URL``), so it
works whether or not a gateway runs. Prints JSON, one object per line.
Evicting a session a gateway holds live ends it at that gateway's next
resume: its client gets 404 and initializes anew.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from bridge import options
from bridge.app import stores_for
from bridge.errors import ConfigError
from bridge.sessions.store import StoreUnavailable
from bridge.settings import Settings
from bridge.stores import sqlite_path

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_STORE_DOWN = 3


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mcp-bridge sessions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["list", "show", "delete"])
    parser.add_argument("session_id", nargs="?", help="for show and delete")
    parser.add_argument("--store-url", help="default: BRIDGE_STORE_URL or the gateway's default")
    parser.add_argument("--limit", type=int, default=1000, help="list at most this many")
    args = parser.parse_args(argv)
    if args.action != "list" and not args.session_id:
        parser.error(f"{args.action} needs a session id")
    overrides = {"store_url": args.store_url} if args.store_url else {}
    try:
        settings = options.settings_from(overrides)
        if _no_sqlite_file(settings.store_url):  # nothing stored yet: create nothing
            return 0 if args.action == "list" else _not_found(args.session_id)
    except ConfigError as exc:
        print(f"mcp-bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(settings, args.action, args.session_id, args.limit))
    except StoreUnavailable as exc:
        print(f"mcp-bridge: store unavailable: {exc}", file=sys.stderr)
        return EXIT_STORE_DOWN


def _no_sqlite_file(url: str) -> bool:
    return url.lower().startswith("sqlite:") and not sqlite_path(url).exists()


def _not_found(session_id: str) -> int:
    print(json.dumps({"session_id": session_id, "found": False}))
    return EXIT_NOT_FOUND


async def _run(settings: Settings, action: str, session_id: str | None, limit: int) -> int:
    stores = await stores_for(settings, lock=False)
    try:
        if action == "list":
            for record in await stores.sessions.list(limit):
                print(json.dumps(record.summary()))
            return 0
        assert session_id is not None
        found = await stores.sessions.get(session_id)
        if found is None:
            return _not_found(session_id)
        if action == "show":
            print(found.to_json())
        else:
            await stores.sessions.delete(session_id)
            await stores.events.delete_session(session_id)
            print(json.dumps({"session_id": session_id, "deleted": True}))
        return 0
    finally:
        await stores.aclose()
