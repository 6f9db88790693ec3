"""RoutingTable -> Envoy resources, one module per xDS type; every name from ``names``.

Pure: no I/O, no clock, no logging, no asyncio. :class:`Translator` memoizes per-server results
by value, so one replica change re-translates (and re-serializes) one ClusterLoadAssignment.
May import ``routing.model``, ``xds.resources`` and Envoy proto modules.
"""

from control_plane.translate.translator import ProxyView, Translator, to_resources

__all__ = ["ProxyView", "Translator", "to_resources"]
