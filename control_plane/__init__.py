"""routeplane: an Envoy xDS control plane fed by a replica registry.

Data flows one way: registry -> routing (pure) -> translate (pure) -> xds.snapshot -> xds.cache
-> xds.server -> Envoy. ``reconcile`` drives the first half, ``app`` wires concrete classes,
``cli`` is click on top of it all. ``dev`` (the demo mesh, sample upstreams, dev certificates)
is tooling around the product: the product imports neither ``dev`` nor ``cli``.
"""
