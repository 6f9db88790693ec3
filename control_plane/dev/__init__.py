"""Dev tooling: the local demo mesh (``mesh``, which also supplies the demo's deployment
topology to the product's ``deploy/``, and ``processes``, how it starts and stops its own), its
Compose file (``compose``), sample upstreams (``samples``) and throwaway mTLS certificates
(``certs``), for ``make run``, tests and benchmarks. Not the product.

The product (``registry``, ``routing``, ``translate``, ``xds``, ``reconcile``, ``app``,
``admin``, ``load``, ``group``, ``deploy``) never imports ``control_plane.dev``; only the CLI's
dev commands, tests and ``bench/`` do. Dev code may import the product (and ``cryptography``
for ``certs``).
"""
