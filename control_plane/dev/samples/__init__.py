"""Sample upstreams (HTTP, WebSocket and gRPC echo, and a self-registering replica process)
for the local mesh, tests and benchmarks. Dev tooling: the product never imports them; they
may import the product (``agent`` registers a replica).
"""
