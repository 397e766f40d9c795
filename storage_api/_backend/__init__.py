"""The backend: a process that holds objects, runs their active methods and keeps them durable.

``_main`` (the process: identity, registration, heartbeat, signals), ``_server`` (connections,
leader/follower serving, the committer), ``_handlers`` (the operation table), ``_runtime`` (live
objects, locks, execution), ``_store`` (the durable log) and ``_rwlock``.
"""
