"""Load: Envoy's (and gRPC clients') load reports -> per server, region and replica load
(``LoadTotals``) -> the autoscaling recommendation.

- ``reports``: pure. The latest report of every LRS stream (a stream replaces only its own),
  merged, bounded per proxy, and summed per server / region / replica (requests in flight,
  requests, errors and drops per second); entries naming clusters, localities or endpoints
  routeplane does not serve are ignored and counted.
- ``autoscale``: pure. The autoscaling spec's rule (demand / target, buffer, min/max, the
  scale-up and scale-down windows) over time.
- ``totals``: pure. ``LoadTotals``, load as a value that merges (per server and region; across
  the workers of ``serve --workers``), and the one ``recommend`` that makes the rows from it.
- ``quiet``: pure. What an idle view may skip.
- ``intake``: the LRS gRPC service (``envoy.service.load_stats.v3``) on the xDS port.
- ``server``: the load view of a process: the book's totals, the rows, hold-mode demand.

``reports``, ``autoscale``, ``totals`` and ``quiet`` do no I/O, read no clock (time is an
argument) and never log.
Nothing here imports the CLI or the dev tooling; ``xds`` never imports this package.
"""
