"""Workload identity: how a proxy's client certificate names the Envoy fleet it may serve as.

A fleet (Envoy node cluster) ``<cluster>`` is the URI SAN ``spiffe://routeplane/fleet/<cluster>``.
Defined once here for the product (the xDS server reads it) and for dev tooling (``dev.certs``
writes it). Imports nothing from ``control_plane``.
"""

from __future__ import annotations

SPIFFE_PREFIX = "spiffe://routeplane/fleet/"


def certificate_clusters(auth: dict[str, list[bytes]]) -> set[str]:
    """The fleet clusters a peer certificate allows: its ``spiffe://routeplane/fleet/<c>`` URI
    SANs, or its common name when it has none."""
    sans = [v.decode() for v in auth.get("x509_subject_alternative_name", [])]
    clusters = {s.removeprefix(SPIFFE_PREFIX) for s in sans if s.startswith(SPIFFE_PREFIX)}
    if clusters:
        return clusters
    return {v.decode() for v in auth.get("x509_common_name", [])}
