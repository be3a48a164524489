"""What the gateway's JSON-RPC codec costs per frame (issue #13), in microseconds.

Times, in this process, the codec calls every proxied answer passes through
(:func:`bridge.jsonrpc.loads_frame` on an upstream's frame, as text from an SSE
stream and as bytes from a JSON body; :func:`bridge.jsonrpc.decode` on a
client's body; :func:`bridge.jsonrpc.encode_bytes` of a new message) on two
frames: the bundled example server's ``tools/list`` answer (1.1 KB) and one of
32 tools (about 9 KB). Each figure is the best of ``--repeat`` runs of
``--number`` calls. ``--gateway-src DIR`` puts DIR first on ``sys.path``:
another commit's codec (a ``git worktree``), measured by the same script.

    python bench/codec.py
    python bench/codec.py --gateway-src /tmp/base      # the same, on another commit
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import timeit
from collections.abc import Callable
from typing import Any


def frames() -> dict[str, str]:
    """The frames timed, by name: compact JSON text, as an upstream writes it."""
    from bridge.examples.server import build

    tools = [
        tool.model_dump(mode="json", exclude_none=True, by_alias=True)
        for tool in asyncio.run(build().list_tools())
    ]
    many = [dict(tools[i % len(tools)], name=f"tool_{i}") for i in range(32)]
    return {
        f"example tools/list ({len(tools)} tools)": _answer(tools),
        "tools/list of 32 tools": _answer(many),
    }


def _answer(tools: list[dict[str, Any]]) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}}, separators=(",", ":")
    )


def best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    """Microseconds per call: the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=5000, help="calls per run")
    p.add_argument("--repeat", type=int, default=7, help="runs; the best counts")
    p.add_argument("--gateway-src", default=None, help="import bridge from this source tree")
    args = p.parse_args()
    if args.gateway_src is not None:
        sys.path.insert(0, args.gateway_src)
    jsonrpc = importlib.import_module("bridge.jsonrpc")
    print(f"bridge from {jsonrpc.__file__}")
    for name, text in frames().items():
        figures = measure(jsonrpc, text, args.number, args.repeat)
        print(
            f"{name}, {len(text.encode())} bytes: "
            + "  ".join(f"{k} {v:.1f} us" for k, v in figures.items())
        )


def measure(jsonrpc: Any, text: str, number: int, repeat: int) -> dict[str, float]:
    """Microseconds per call of each codec call on one frame (``text``)."""
    data = text.encode()
    message = json.loads(text)
    copies = iter([dict(message) for _ in range(number * repeat)])  # a new message each call
    return {
        "loads_frame(str)": best_us(lambda: jsonrpc.loads_frame(text), number, repeat),
        "loads_frame(bytes)": best_us(lambda: jsonrpc.loads_frame(data), number, repeat),
        "decode(bytes)": best_us(lambda: jsonrpc.decode(data), number, repeat),
        "encode_bytes(new)": best_us(lambda: jsonrpc.encode_bytes(next(copies)), number, repeat),
    }


if __name__ == "__main__":
    main()
