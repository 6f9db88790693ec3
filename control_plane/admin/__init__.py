"""What operators and the CLI inspect: the gRPC admin API (``protos/``), ``/healthz``,
``/readyz`` and ``/metrics`` on one port.

Reads the running state it is handed (the xDS server, the snapshot cache, the routing table);
under ``serve --workers`` the supervisor serves the same API from ``group/admin.py``, which asks
the workers' (a worker's load totals travel by ``loadwire``, an internal stream of the same API).
Never writes to the registry and never imports a store, the group, the CLI or the dev tooling.
"""
