"""Load: Envoy's (and gRPC clients') load reports -> per server, region and replica load -> the
autoscaling recommendation.

- ``reports``: pure. The latest report of every LRS stream (a stream replaces only its own),
  merged, bounded per proxy, and summed per server / region / replica (requests in flight,
  requests, errors and drops per second); entries naming clusters, localities or endpoints
  routeplane does not serve are ignored and counted.
- ``autoscale``: pure. The autoscaling spec's rule (demand / target, buffer, min/max, the
  scale-up and scale-down windows) over time.
- ``server``: the LRS gRPC service (``envoy.service.load_stats.v3``) on the xDS port.

``reports`` and ``autoscale`` do no I/O, read no clock (time is an argument) and never log.
Nothing here imports the CLI or the dev tooling; ``xds`` never imports this package.
"""
