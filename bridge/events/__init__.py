"""Event stores: what was sent on each SSE stream, kept for Last-Event-ID replay."""
