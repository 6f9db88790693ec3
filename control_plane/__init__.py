"""routeplane: an Envoy xDS control plane fed by a replica registry.

Data flows one way: registry -> routing (pure) -> translate (pure) -> xds.snapshot -> xds.cache
-> xds.server -> Envoy. ``pipeline`` is the pure step from registry state and wanted node groups
to snapshots, ``reconcile`` drives it, ``app`` wires concrete classes,
``cli`` is click on top of it all. ``dev`` (the demo mesh, sample upstreams, dev certificates)
is tooling around the product: the product imports neither ``dev`` nor ``cli``.
"""
