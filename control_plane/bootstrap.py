"""Render an Envoy bootstrap that points a proxy at routeplane over ADS."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from string import Template

from control_plane.registry import validate
from control_plane.registry.errors import ValidationError

# Shipped inside the package (package data), so an installed wheel renders it too.
TEMPLATE = "bootstrap.yaml"


def render(
    *,
    node_id: str,
    cluster: str,
    region: str,
    zone: str = "",
    xds: list[str],
    listen: str,
    admin: str,
    delta: bool = True,
    tls: tuple[str, str, str] | None = None,
) -> str:
    """The bootstrap YAML; raises ValidationError naming the flag on bad input."""

    def address(flag: str, value: str, *, names: bool = False) -> tuple[str, int]:
        # Envoy resolves the control plane's address itself (a name is fine); its listener and
        # admin addresses must be IP literals.
        try:
            return validate.address(value, names=names)
        except ValidationError as exc:
            raise ValidationError(flag, value, exc.reason) from None

    if not node_id:
        raise ValidationError("--node-id", node_id, "must not be empty")
    validate.name("--cluster", cluster)
    validate.region("--region", region)
    validate.region("--zone", zone, required=False)
    if not xds:
        raise ValidationError("--xds", "", "give at least one control-plane address")
    endpoints = []
    for value in xds:
        host, port = address("--xds", value, names=True)
        endpoints.append(
            "        - endpoint:\n            address:\n              socket_address: "
            + json.dumps({"address": host, "port_value": port})
        )
    listen_host, listen_port = address("--listen", listen)
    admin_host, admin_port = address("--admin", admin)
    template = resources.files("control_plane").joinpath(TEMPLATE).read_text()
    return Template(template).substitute(
        node_id=json.dumps(node_id),
        cluster=json.dumps(cluster),
        region=json.dumps(region),
        zone=json.dumps(zone),
        listen=f"[{listen_host}]:{listen_port}"
        if ":" in listen_host
        else f"{listen_host}:{listen_port}",
        api_type="DELTA_GRPC" if delta else "GRPC",
        xds_endpoints="\n".join(endpoints),
        admin_host=admin_host,
        admin_port=admin_port,
        transport_socket=_transport_socket(tls),
    )


def _transport_socket(tls: tuple[str, str, str] | None) -> str:
    """mTLS to the control plane: our client certificate, and its CA to check the server."""
    if tls is None:
        return ""
    cert, key, ca = (json.dumps(str(Path(p).resolve())) for p in tls)
    return (
        "    transport_socket:\n"
        "      name: envoy.transport_sockets.tls\n"
        "      typed_config:\n"
        '        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.'
        "UpstreamTlsContext\n"
        "        common_tls_context:\n"
        "          tls_certificates:\n"
        f"          - certificate_chain: {{filename: {cert}}}\n"
        f"            private_key: {{filename: {key}}}\n"
        "          validation_context:\n"
        f"            trusted_ca: {{filename: {ca}}}\n"
    )


def render_grpc(
    *,
    node_id: str,
    cluster: str,
    region: str,
    zone: str = "",
    xds: list[str],
    tls: tuple[str, str, str] | None = None,
) -> str:
    """A gRPC xDS bootstrap (JSON, for ``GRPC_XDS_BOOTSTRAP`` or ``GRPC_XDS_BOOTSTRAP_CONFIG``)
    for gRPC's own xDS client; raises ValidationError naming the flag on bad input.

    gRPC talks to the first control plane listed and falls back to the next ones. With ``tls``
    (certificate, key, CA files) it connects over mTLS (``channel_creds`` "tls", whose client
    certificate is what node authorization reads) and declares the same files as the
    ``file_watcher`` certificate provider "routeplane" for xDS-managed security.
    """
    if not node_id:
        raise ValidationError("--node-id", node_id, "must not be empty")
    validate.name("--cluster", cluster)
    validate.region("--region", region, required=False)
    validate.region("--zone", zone, required=False)
    if not xds:
        raise ValidationError("--xds", "", "give at least one control-plane address")
    uris = []
    for value in xds:
        try:
            host, port = validate.address(value, names=True)
        except ValidationError as exc:
            raise ValidationError("--xds", value, exc.reason) from None
        uris.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    creds: dict[str, object] = {"type": "insecure"}
    document: dict[str, object] = {}
    if tls is not None:
        cert, key, ca = (str(Path(p).resolve()) for p in tls)
        files = {"certificate_file": cert, "private_key_file": key, "ca_certificate_file": ca}
        creds = {"type": "tls", "config": files}
        document["certificate_providers"] = {
            "routeplane": {
                "plugin_name": "file_watcher",
                "config": {**files, "refresh_interval": "600s"},
            }
        }
    locality = {k: v for k, v in (("region", region), ("zone", zone)) if v}
    document = {
        "xds_servers": [
            {"server_uri": uri, "channel_creds": [creds], "server_features": ["xds_v3"]}
            for uri in uris
        ],
        "node": {"id": node_id, "cluster": cluster, "locality": locality},
        **document,
    }
    return json.dumps(document, indent=2) + "\n"
