"""A deployment's topology as a value: the control plane (its xDS and admin ports, replicas), the
Envoy fleets (name, region, node cluster, listener and admin ports, replicas) and the cluster
settings (:class:`KubeConfig`: image, registry, Google service account, namespace).

``deploy/kubernetes.py`` renders a :class:`Topology`; ``routeplane deploy kubernetes`` reads one
from a YAML or JSON file (:func:`load`); the demo mesh builds its own (``dev/mesh.py``). Pure: no
I/O. Bad input raises ValueError naming the field and the value; a file is bounded in bytes
(:data:`MAX_BYTES`) and fleets (:data:`MAX_FLEETS`) before anything is built from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

NAMESPACE = "routeplane"
IMAGE = "routeplane:0.1.0"  # what the Dockerfile builds (`docker build -t routeplane:0.1.0 .`)
REGISTRY = "spanner://projects/PROJECT_ID/instances/routeplane/databases/registry"
GCP_SERVICE_ACCOUNT = "routeplane@PROJECT_ID.iam.gserviceaccount.com"

MAX_BYTES = 64 * 1024  # a topology file
MAX_FLEETS = 64
MAX_REPLICAS = 1000  # per Deployment
# Names the control plane's own objects use (Deployment, Services, component labels): a fleet
# so named would take over their selectors.
RESERVED = frozenset(
    {
        "routeplane",
        "routeplane-xds",
        "routeplane-admin",
        "control-plane",
        "registry-init",
        "monitoring",
        "certificates",
    }
)
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label (RFC 1123)
_SERVICE = re.compile(r"[a-z]([-a-z0-9]{0,51}[a-z0-9])?")  # a Service name, + "-bootstrap" fits


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeConfig:
    """What an operator sets for their cluster; the committed ``deploy/`` uses the defaults."""

    image: str = IMAGE
    registry: str = REGISTRY
    gcp_service_account: str = GCP_SERVICE_ACCOUNT
    namespace: str = NAMESPACE

    def validate(self, *, flags: bool = True) -> None:
        """Raise ValueError naming the setting (as its flag, or else as its topology file key)
        and the value of the first one that cannot work."""

        def label(key: str) -> str:
            return f"--{key.replace('_', '-')}" if flags else key

        if not re.fullmatch(
            r"spanner://projects/[^/]+/instances/[^/]+/databases/[^/]+", self.registry
        ):
            raise ValueError(
                f"invalid {label('registry')} {self.registry!r}: expected "
                "spanner://projects/P/instances/I/databases/D (replicas share one Spanner database)"
            )
        if not _LABEL.fullmatch(self.namespace):
            raise ValueError(
                f"invalid {label('namespace')} {self.namespace!r}: expected a DNS label"
            )
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(
                f"invalid {label('image')} {self.image!r}: expected an image reference"
            )
        if not re.fullmatch(
            r"[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com", self.gcp_service_account
        ):
            raise ValueError(
                f"invalid {label('gcp_service_account')} {self.gcp_service_account!r}: expected "
                "NAME@PROJECT.iam.gserviceaccount.com"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Fleet:
    """One Deployment of Envoys in one region, all of one node cluster."""

    name: str  # the Deployment, its Service and its bootstrap ConfigMap (NAME-bootstrap)
    region: str  # in the bootstrap's locality
    port: int  # the listener routeplane sends (LDS), on every address; the Service's port
    admin_port: int = 9901  # Envoy's admin, on the pod's loopback only
    replicas: int = 2
    cluster: str = "edge"  # the node cluster: its client certificate's URI SAN names it


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """What ``deploy/kubernetes.py`` renders: one control plane, its Envoy fleets, the settings."""

    fleets: tuple[Fleet, ...]
    xds_port: int = 18000
    admin_port: int = 18001
    replicas: int = 2  # of the control plane, each a whole one, on nodes apart
    kube: KubeConfig = field(default_factory=KubeConfig)

    def validate(self) -> None:
        """Raise ValueError naming the field and the value of the first problem."""
        self.kube.validate()
        _port("control_plane.xds_port", self.xds_port)
        _port("control_plane.admin_port", self.admin_port)
        if self.admin_port == self.xds_port:
            raise ValueError(
                f"invalid control_plane.admin_port {self.admin_port!r}: the xDS port is the same"
            )
        _replicas("control_plane.replicas", self.replicas)
        if not 1 <= len(self.fleets) <= MAX_FLEETS:
            raise ValueError(
                f"invalid fleets: {len(self.fleets)} fleets, expected 1 to {MAX_FLEETS}"
            )
        seen: set[str] = set()
        for index, fleet in enumerate(self.fleets):
            where = f"fleets[{index}]"
            if not isinstance(fleet.name, str) or not _SERVICE.fullmatch(fleet.name):
                raise ValueError(
                    f"invalid {where}.name {fleet.name!r}: expected 1-53 lowercase letters, "
                    "digits and '-', starting with a letter"
                )
            if fleet.name in RESERVED:
                raise ValueError(
                    f"invalid {where}.name {fleet.name!r}: the control plane's objects use it"
                )
            if fleet.name in seen:
                raise ValueError(f"invalid {where}.name {fleet.name!r}: another fleet has it")
            seen.add(fleet.name)
            for key, value in (("region", fleet.region), ("cluster", fleet.cluster)):
                if not isinstance(value, str) or not _LABEL.fullmatch(value):
                    raise ValueError(
                        f"invalid {where}.{key} {value!r}: expected a DNS label such as us-west"
                    )
            _port(f"{where}.port", fleet.port)
            _port(f"{where}.admin_port", fleet.admin_port)
            if fleet.admin_port == fleet.port:
                raise ValueError(
                    f"invalid {where}.admin_port {fleet.admin_port!r}: the listener's port is "
                    "the same"
                )
            _replicas(f"{where}.replicas", fleet.replicas)


def _whole(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid {where} {value!r}: expected a whole number")
    return value


def _port(where: str, value: object) -> None:
    if not 1 <= _whole(where, value) <= 65535:
        raise ValueError(f"invalid {where} {value!r}: expected a port from 1 to 65535")


def _replicas(where: str, value: object) -> None:
    if not 1 <= _whole(where, value) <= MAX_REPLICAS:
        raise ValueError(f"invalid {where} {value!r}: expected 1 to {MAX_REPLICAS} replicas")


def _fields(where: str, value: object, known: Mapping[str, type]) -> dict[str, Any]:
    """A mapping with only the known keys, each of its type (ints checked later, by name)."""
    if not isinstance(value, dict):
        raise ValueError(f"invalid {where or 'topology'}: expected a mapping of fields")
    for key, item in value.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ValueError(f"unknown field {name!r}: expected one of {', '.join(sorted(known))}")
        if known[key] is str and not isinstance(item, str):
            raise ValueError(f"invalid {name} {item!r}: expected a string")
    return dict(value)


_TOP = {"namespace": str, "image": str, "registry": str, "gcp_service_account": str}
_CONTROL_PLANE = {"xds_port": int, "admin_port": int, "replicas": int}
_FLEET = {
    "name": str,
    "region": str,
    "port": int,
    "admin_port": int,
    "replicas": int,
    "cluster": str,
}


def parse(document: object) -> Topology:
    """A topology from a parsed YAML or JSON document, checked whole (:meth:`Topology.validate`;
    its cluster settings named as the file's keys)."""
    top = _fields("", document, {**_TOP, "control_plane": dict, "fleets": list})
    fleets = top.pop("fleets", None)
    if not isinstance(fleets, list):
        raise ValueError(f"invalid fleets {fleets!r}: expected a list of fleets")
    if not 1 <= len(fleets) <= MAX_FLEETS:
        raise ValueError(f"invalid fleets: {len(fleets)} fleets, expected 1 to {MAX_FLEETS}")
    given = [_fields(f"fleets[{index}]", fleet, _FLEET) for index, fleet in enumerate(fleets)]
    for index, fleet in enumerate(given):
        for key in ("name", "region", "port"):
            if key not in fleet:
                raise ValueError(f"missing field fleets[{index}].{key}")
    topology = Topology(
        fleets=tuple(Fleet(**fleet) for fleet in given),
        **_fields("control_plane", top.pop("control_plane", {}), _CONTROL_PLANE),
        kube=KubeConfig(**top),
    )
    topology.kube.validate(flags=False)
    topology.validate()
    return topology


def load(text: str | bytes) -> Topology:
    """A topology from a file's text (YAML, or JSON, which YAML reads), at most
    :data:`MAX_BYTES`."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise ValueError(f"invalid topology: {size} bytes, at most {MAX_BYTES}")
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"invalid topology: not YAML or JSON{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:  # a byte the reader refuses, in one line
        raise ValueError(
            f"invalid topology: not YAML or JSON: {str(exc).splitlines()[0]}"
        ) from None
    except RecursionError:  # a few thousand nested brackets fit in MAX_BYTES
        raise ValueError("invalid topology: nested too deep") from None
    return parse(document)
