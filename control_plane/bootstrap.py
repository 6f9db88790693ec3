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
