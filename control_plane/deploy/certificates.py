"""cert-manager's resources for a topology (optional: its kinds are CRDs) and the names of the
TLS Secrets the pods mount, in cert-manager's layout (``tls.crt``, ``tls.key``, ``ca.crt``): a
CA, the control plane's server certificate, one client certificate per node cluster. Pure."""

from __future__ import annotations

from typing import Any

from control_plane.deploy.objects import meta
from control_plane.deploy.topology import Topology

XDS_TLS_SECRET = "routeplane-xds-tls"
CA_SECRET = "routeplane-ca"


def fleet_tls_secret(cluster: str) -> str:
    """The Secret holding the client certificate of a node cluster's Envoys."""
    return f"routeplane-{cluster}-tls"


def cert_manager(topology: Topology) -> list[dict[str, Any]]:
    """cert-manager resources (CRDs, optional): a CA, the control plane's server certificate
    for the xDS Service and one client certificate per node cluster of the fleets, naming the
    cluster as the URI SAN the control plane checks. Each Secret holds tls.crt, tls.key and
    ca.crt."""
    from control_plane.identity import SPIFFE_PREFIX

    kube = topology.kube

    def named(name: str) -> dict[str, Any]:
        return meta(name, kube, "certificates")

    def certificate(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": named(name),
            "spec": {
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "duration": "2160h",
                "renewBefore": "720h",
                **spec,
            },
        }

    service = "routeplane-xds"
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": named("routeplane-selfsigned"),
            "spec": {"selfSigned": {}},
        },
        certificate(
            "routeplane-ca",
            {
                "isCA": True,
                "commonName": "routeplane CA",
                "secretName": CA_SECRET,
                "duration": "87600h",
                "renewBefore": "8760h",
                "issuerRef": {"name": "routeplane-selfsigned", "kind": "Issuer"},
            },
        ),
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": named("routeplane-ca"),
            "spec": {"ca": {"secretName": CA_SECRET}},
        },
        certificate(
            "routeplane-xds",
            {
                "secretName": XDS_TLS_SECRET,
                "dnsNames": [
                    f"{service}.{kube.namespace}.svc.cluster.local",
                    f"{service}.{kube.namespace}.svc",
                    service,
                ],
                "usages": ["server auth", "digital signature", "key encipherment"],
                "issuerRef": {"name": "routeplane-ca", "kind": "Issuer"},
            },
        ),
        *(
            certificate(
                f"routeplane-{cluster}",
                {
                    "secretName": fleet_tls_secret(cluster),
                    "commonName": cluster,
                    "uris": [f"{SPIFFE_PREFIX}{cluster}"],
                    "usages": ["client auth", "digital signature", "key encipherment"],
                    "issuerRef": {"name": "routeplane-ca", "kind": "Issuer"},
                },
            )
            for cluster in dict.fromkeys(fleet.cluster for fleet in topology.fleets)
        ),
    ]
