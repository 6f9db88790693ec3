"""``routeplane certs dev``: a throwaway CA and certificates for mTLS between Envoy and the
control plane on a developer machine. Never use them in production.

The client certificate carries the Envoy fleet it may serve as a URI SAN
``spiffe://routeplane/fleet/<cluster>`` (and as its CN); the control plane only sends a proxy
the node group of that cluster.

Dev tooling: the product never imports it. The SPIFFE prefix comes from the product's
``control_plane.identity``, which the xDS server checks against.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.identity import SPIFFE_PREFIX


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def dev_certs(
    out: Path, *, clusters: list[str], days: int = 30, cn_only: tuple[str, ...] = ()
) -> list[Path]:
    """Write ca.pem, server.pem/-key.pem (127.0.0.1, ::1, localhost) and one client pair per
    fleet cluster; returns the paths written. ``cn_only`` clusters also get a client pair
    ``client-<cluster>-cn`` that names the fleet by its common name alone (no URI SAN), as
    certificates from older tooling do."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "routeplane dev CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    written = [out / "ca.pem"]
    _write(out / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, common_name: str, sans: list[x509.GeneralName], usage: object) -> None:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)  # type: ignore[list-item]
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(out / f"{name}-key.pem", _pem_key(key))
        written.extend([out / f"{name}.pem", out / f"{name}-key.pem"])

    leaf(
        "server",
        "routeplane",
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    for cluster in clusters:
        leaf(
            f"client-{cluster}",
            cluster,
            [x509.UniformResourceIdentifier(SPIFFE_PREFIX + cluster)],
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
    for cluster in cn_only:
        leaf(f"client-{cluster}-cn", cluster, [], ExtendedKeyUsageOID.CLIENT_AUTH)
    return written
