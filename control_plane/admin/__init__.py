"""What operators and the CLI inspect: health endpoints now, the gRPC admin API later.

May import ``xds`` and ``reconcile`` state; never writes to the registry.
"""
