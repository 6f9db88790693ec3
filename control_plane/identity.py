"""Workload identity: how a proxy's client certificate names the Envoy fleet it may serve as.

A fleet (Envoy node cluster) ``<cluster>`` is the URI SAN ``spiffe://routeplane/fleet/<cluster>``.
Defined once here for the product (the xDS server reads it) and for dev tooling (``dev.certs``
writes it). Imports nothing from ``control_plane``.
"""

from __future__ import annotations

SPIFFE_PREFIX = "spiffe://routeplane/fleet/"
