"""Routing decisions: pure functions of registry state.

Never does I/O, reads the clock, logs or touches asyncio. Bad rows become
:class:`Problem` values, never exceptions that stop the rest. Imports only the registry's
pure modules (``model``, ``validate``, ``spec``, ``errors``); never a store, the network, asyncio
or a logger (an import-linter contract in ``make lint``).
"""

from control_plane.routing.build import to_routing_table
from control_plane.routing.model import Endpoint, Problem, RoutedServer, RoutingTable

__all__ = ["Endpoint", "Problem", "RoutedServer", "RoutingTable", "to_routing_table"]
