"""The backend: a process that holds objects, runs their active methods and keeps them durable.

``_main`` (the process: identity, registration, heartbeat, signals), ``_server`` (connections,
leader/follower serving, the committer), ``_handlers`` (the operation table), ``_runtime`` (live
objects, locks, execution) with ``_placement`` (move, replicas, authority), ``_tasks`` (shipped
tasks), ``_peer`` (the backend's own client: requests to itself stay in process), ``_control``
(requests from COMPSs' Java side through Redis), ``_store`` (the durable log) and ``_rwlock``.
The backend builds on the client runtime; the client never imports this package.
"""
