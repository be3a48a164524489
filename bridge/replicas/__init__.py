"""Replicas sharing one Redis, with no affinity at the load balancer (issue #12).

- :mod:`bridge.replicas.lease`: which replica holds a session's upstream work
  (a lease per replica, an owner key per session; takeover of a lapsed one).
- :mod:`bridge.replicas.bus`: frames between replicas over Redis Streams.
- :mod:`bridge.replicas.forward`: an HTTP exchange for a session held
  elsewhere, tunnelled to its owner over the bus and relayed back.

:class:`bridge.replicas.replica.Replica` runs them for one gateway process: the lease renewal, the
bus reader, the loopback listener for forwarded exchanges. It exists only
with a Redis store; SQLite is locked to one process and memory is in-process.
"""
