"""MCP revision 2026-07-28 (sessionless) served in front of session-era servers (issue #11).

- :mod:`bridge.modern.wire`: sans-IO era choice, checks and answer shapes;
- :mod:`bridge.modern.state`: the ``requestState`` token;
- :mod:`bridge.modern.exchange`: one request's upstream call on a pool group,
  held between input rounds.

The HTTP side is :mod:`bridge.frontends.modern_http`; spec-notes §7.1 lists
the rules and their sources.
"""
