"""cert-manager's resources for a topology (optional: its kinds are CRDs) and the names of the
TLS Secrets the pods mount, in cert-manager's layout (``tls.crt``, ``tls.key``, ``ca.crt``): a
CA, the control plane's server certificate, one client certificate per node cluster. Pure."""

from __future__ import annotations

from typing import Any

from control_plane.deploy.objects import meta
from control_plane.deploy.topology import KubeConfig, Topology

XDS_TLS_SECRET = "routeplane-xds-tls"
CA_SECRET = "routeplane-ca"
KEDA_CLIENT = "routeplane-keda-client"  # KEDA's client certificate (--keda-listen is mTLS)
KEDA_TLS_SECRET = "routeplane-keda-client-tls"


def fleet_certificate(cluster: str) -> str:
    """The Certificate of a node cluster's Envoys."""
    return f"routeplane-{cluster}"


def fleet_tls_secret(cluster: str) -> str:
    """The Secret holding the client certificate of a node cluster's Envoys."""
    return f"routeplane-{cluster}-tls"


def cert_manager(topology: Topology) -> list[dict[str, Any]]:
    """cert-manager resources (CRDs, optional): :func:`authority`, then one client certificate
    per node cluster of the fleets (:func:`client_certificate`)."""
    clusters = dict.fromkeys(fleet.cluster for fleet in topology.fleets)
    return [
        *authority(topology.kube),
        *(client_certificate(cluster, topology.kube) for cluster in clusters),
    ]


def _certificate(name: str, kube: KubeConfig, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": meta(name, kube, "certificates"),
        "spec": {
            "privateKey": {"algorithm": "ECDSA", "size": 256},
            "duration": "2160h",
            "renewBefore": "720h",
            **spec,
        },
    }


def client_certificate(cluster: str, kube: KubeConfig) -> dict[str, Any]:
    """A node cluster's client certificate, naming the cluster as the URI SAN the control plane
    checks; its Secret holds tls.crt, tls.key and ca.crt."""
    from control_plane.identity import SPIFFE_PREFIX

    return _certificate(
        fleet_certificate(cluster),
        kube,
        {
            "secretName": fleet_tls_secret(cluster),
            "commonName": cluster,
            "uris": [f"{SPIFFE_PREFIX}{cluster}"],
            "usages": ["client auth", "digital signature", "key encipherment"],
            "issuerRef": {"name": "routeplane-ca", "kind": "Issuer"},
        },
    )


def authority(kube: KubeConfig) -> list[dict[str, Any]]:
    """The control plane's own: a self-signed CA, its Issuer, the server certificate for the
    xDS and KEDA Services (one ``serve`` serves both with it), and KEDA's client certificate;
    each Secret holds tls.crt, tls.key and ca.crt."""
    names = [
        name
        for service in ("routeplane-xds", "routeplane-keda")
        for name in (
            f"{service}.{kube.namespace}.svc.cluster.local",
            f"{service}.{kube.namespace}.svc",
            service,
        )
    ]
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": meta("routeplane-selfsigned", kube, "certificates"),
            "spec": {"selfSigned": {}},
        },
        _certificate(
            "routeplane-ca",
            kube,
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
            "metadata": meta("routeplane-ca", kube, "certificates"),
            "spec": {"ca": {"secretName": CA_SECRET}},
        },
        _certificate(
            "routeplane-xds",
            kube,
            {
                "secretName": XDS_TLS_SECRET,
                "dnsNames": names,
                "usages": ["server auth", "digital signature", "key encipherment"],
                "issuerRef": {"name": "routeplane-ca", "kind": "Issuer"},
            },
        ),
        _certificate(
            KEDA_CLIENT,
            kube,
            {
                "secretName": KEDA_TLS_SECRET,
                "commonName": "keda",
                "usages": ["client auth", "digital signature", "key encipherment"],
                "issuerRef": {"name": "routeplane-ca", "kind": "Issuer"},
            },
        ),
    ]
