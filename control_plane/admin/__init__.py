"""What operators and the CLI inspect: the gRPC admin API (``protos/``), ``/healthz``,
``/readyz`` and ``/metrics`` on one port.

Reads the running state it is handed (the xDS server, the snapshot cache, the routing table), or
under ``serve --workers`` asks the workers' admin APIs and merges their answers (``aggregate``;
a worker's load totals travel by ``loadwire``, an internal stream of the same API);
never writes to the registry and never imports a store, the CLI or the dev tooling.
"""
