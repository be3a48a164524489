"""The upstream pool: many client sessions over a few upstream sessions (issue #10).

- :mod:`bridge.pool.pool`: a server's pool; leases connections to client sessions.
- :mod:`bridge.pool.group`: the upstream sessions of one share key; dispatch.
- :mod:`bridge.pool.channel`: a client session's virtual connection onto a group.
- :mod:`bridge.pool.upstream_session`: one upstream MCP session, the gateway as its client.
- :mod:`bridge.pool.mux`: sans-IO id rewriting and attribution rules.
"""

from bridge.pool.pool import Pool, PoolConfig, Share
from bridge.pool.upstream_session import SessionTimeouts

__all__ = ["Pool", "PoolConfig", "SessionTimeouts", "Share"]
