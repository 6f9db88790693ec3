"""A deployment's topology as a value: the control plane (its xDS, admin and KEDA ports,
replicas), the Envoy fleets (name, region, node cluster, listener and admin ports, replicas), the
servers KEDA scales (:class:`Scaled`) and the cluster settings (:class:`KubeConfig`: image,
registry, Google service account, namespace).

``deploy/kubernetes.py`` renders a :class:`Topology`; ``routeplane deploy kubernetes`` reads one
from a YAML or JSON file (:func:`load`); the demo mesh builds its own (``dev/mesh.py``). Pure: no
I/O. Bad input raises ValueError naming the field and the value (cut to :data:`SHOWN` characters:
:func:`shown`); a file is bounded in bytes (:data:`MAX_BYTES`) and fleets (:data:`MAX_FLEETS`)
before anything is built from it, and read as plain data: no anchors, aliases or tags, no key
twice, and only the scalars a topology has (strings, whole numbers of at most :data:`MAX_DIGITS`
digits, booleans, null; anything else, a date or a float, stays a string for its field's check).
"""

from __future__ import annotations

import re
import reprlib
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
MAX_SCALED = 1000  # ScaledObjects (servers KEDA scales)
MAX_DIGITS = 64  # a whole number in a topology file; longer ones stay strings
SHOWN = 80  # characters of a bad value an error echoes
# Names the control plane's own objects use (Deployment, Services, component labels): a fleet
# so named would take over their selectors.
RESERVED = frozenset(
    {
        "routeplane",
        "routeplane-xds",
        "routeplane-admin",
        "routeplane-keda",
        "control-plane",
        "registry-init",
        "monitoring",
        "certificates",
        "autoscaling",
    }
)
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label (RFC 1123)
_SERVICE = re.compile(r"[a-z]([-a-z0-9]{0,51}[a-z0-9])?")  # a Service name, + "-bootstrap" fits

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = SHOWN
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4


def shown(value: object) -> str:
    """``repr(value)`` in one line of at most :data:`SHOWN` characters, however big the value."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 3]}..."


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

        if not self.registry.isprintable() or not re.fullmatch(
            r"spanner://projects/[^/\s]+/instances/[^/\s]+/databases/[^/\s]+", self.registry
        ):
            raise ValueError(
                f"invalid {label('registry')} {shown(self.registry)}: expected "
                "spanner://projects/P/instances/I/databases/D (replicas share one Spanner database)"
            )
        if not _LABEL.fullmatch(self.namespace):
            raise ValueError(
                f"invalid {label('namespace')} {shown(self.namespace)}: expected a DNS label"
            )
        if not self.image.isprintable() or not self.image or " " in self.image:
            raise ValueError(
                f"invalid {label('image')} {shown(self.image)}: expected an image reference"
            )
        if not self.gcp_service_account.isprintable() or not re.fullmatch(
            r"[^@\s]+@[^@\s]+\.iam\.gserviceaccount\.com", self.gcp_service_account
        ):
            raise ValueError(
                f"invalid {label('gcp_service_account')} {shown(self.gcp_service_account)}: "
                "expected NAME@PROJECT.iam.gserviceaccount.com"
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
class Scaled:
    """A routeplane server whose replicas KEDA scales: a ScaledObject following the control
    plane's KEDA scaler (``serve --keda-listen``) for ``server`` (and ``region``), scaling the
    Deployment ``deployment`` (in the topology's namespace) between the bounds."""

    server: str  # the routeplane server (registry name)
    deployment: str = ""  # the Deployment running its replicas; "": the server's name
    region: str = ""  # "": the server's total ("*")
    min_replicas: int = 0
    max_replicas: int = 10

    @property
    def target(self) -> str:
        return self.deployment or self.server


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """What ``deploy/kubernetes.py`` renders: one control plane, its Envoy fleets, the servers
    KEDA scales, the settings."""

    fleets: tuple[Fleet, ...]
    xds_port: int = 18000
    admin_port: int = 18001
    keda_port: int = 18002  # KEDA's external scaler (serve --keda-listen)
    replicas: int = 2  # of the control plane, each a whole one, on nodes apart
    scaled: tuple[Scaled, ...] = ()
    kube: KubeConfig = field(default_factory=KubeConfig)

    def validate(self) -> None:
        """Raise ValueError naming the field and the value of the first problem."""
        self.kube.validate()
        _port("control_plane.xds_port", self.xds_port)
        _port("control_plane.admin_port", self.admin_port)
        _port("control_plane.keda_port", self.keda_port)
        if self.admin_port == self.xds_port:
            raise ValueError(
                f"invalid control_plane.admin_port {shown(self.admin_port)}: the xDS port is "
                "the same"
            )
        if self.keda_port in (self.xds_port, self.admin_port):
            raise ValueError(
                f"invalid control_plane.keda_port {shown(self.keda_port)}: the xDS or the admin "
                "port is the same"
            )
        self._validate_scaled()
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
                    f"invalid {where}.name {shown(fleet.name)}: expected 1-53 lowercase letters, "
                    "digits and '-', starting with a letter"
                )
            if fleet.name in RESERVED:
                raise ValueError(
                    f"invalid {where}.name {shown(fleet.name)}: the control plane's objects use it"
                )
            if fleet.name in seen:
                raise ValueError(f"invalid {where}.name {shown(fleet.name)}: another fleet has it")
            seen.add(fleet.name)
            for key, value in (("region", fleet.region), ("cluster", fleet.cluster)):
                if not isinstance(value, str) or not _LABEL.fullmatch(value):
                    raise ValueError(
                        f"invalid {where}.{key} {shown(value)}: expected a DNS label such as "
                        "us-west"
                    )
            _port(f"{where}.port", fleet.port)
            _port(f"{where}.admin_port", fleet.admin_port)
            if fleet.admin_port == fleet.port:
                raise ValueError(
                    f"invalid {where}.admin_port {shown(fleet.admin_port)}: the listener's port is "
                    "the same"
                )
            _replicas(f"{where}.replicas", fleet.replicas)

    def _validate_scaled(self) -> None:
        if len(self.scaled) > MAX_SCALED:
            raise ValueError(f"invalid scaled: {len(self.scaled)} servers, at most {MAX_SCALED}")
        seen: set[str] = set()
        for index, scaled in enumerate(self.scaled):
            where = f"scaled[{index}]"
            for key, value, empty in (
                ("server", scaled.server, False),
                ("deployment", scaled.deployment, True),
                ("region", scaled.region, True),
            ):
                if not isinstance(value, str) or not (
                    _LABEL.fullmatch(value) or (empty and value == "")
                ):
                    raise ValueError(
                        f"invalid {where}.{key} {shown(value)}: expected a DNS label such as "
                        f"{'us-west' if key == 'region' else 'echo'}"
                    )
            key = f"{scaled.server}/{scaled.region}"
            if key in seen:
                raise ValueError(
                    f"invalid {where}.server {shown(scaled.server)}: scaled twice"
                    + (f" in region {scaled.region}" if scaled.region else "")
                )
            seen.add(key)
            if not 0 <= _whole(f"{where}.min_replicas", scaled.min_replicas) <= MAX_REPLICAS:
                raise ValueError(
                    f"invalid {where}.min_replicas {shown(scaled.min_replicas)}: expected 0 to "
                    f"{MAX_REPLICAS}"
                )
            _replicas(f"{where}.max_replicas", scaled.max_replicas)
            if scaled.max_replicas < scaled.min_replicas:
                raise ValueError(
                    f"invalid {where}.max_replicas {shown(scaled.max_replicas)}: below "
                    f"min_replicas {scaled.min_replicas}"
                )


def _whole(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"invalid {where} {shown(value)}: expected a whole number")
    return value


def _port(where: str, value: object) -> None:
    if not 1 <= _whole(where, value) <= 65535:
        raise ValueError(f"invalid {where} {shown(value)}: expected a port from 1 to 65535")


def _replicas(where: str, value: object) -> None:
    if not 1 <= _whole(where, value) <= MAX_REPLICAS:
        raise ValueError(f"invalid {where} {shown(value)}: expected 1 to {MAX_REPLICAS} replicas")


def _fields(where: str, value: object, known: Mapping[str, type]) -> dict[str, Any]:
    """A mapping with only the known keys, each of its type (ints checked later, by name)."""
    if not isinstance(value, dict):
        raise ValueError(f"invalid {where or 'topology'}: expected a mapping of fields")
    for key, item in value.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in known:
            raise ValueError(
                f"unknown field {shown(name)}: expected one of {', '.join(sorted(known))}"
            )
        if known[key] is str and not isinstance(item, str):
            raise ValueError(f"invalid {name} {shown(item)}: expected a string")
    return dict(value)


_TOP = {"namespace": str, "image": str, "registry": str, "gcp_service_account": str}
_CONTROL_PLANE = {"xds_port": int, "admin_port": int, "keda_port": int, "replicas": int}
_SCALED = {
    "server": str,
    "deployment": str,
    "region": str,
    "min_replicas": int,
    "max_replicas": int,
}
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
    top = _fields("", document, {**_TOP, "control_plane": dict, "fleets": list, "scaled": list})
    fleets = top.pop("fleets", None)
    if not isinstance(fleets, list):
        raise ValueError(f"invalid fleets {shown(fleets)}: expected a list of fleets")
    if not 1 <= len(fleets) <= MAX_FLEETS:
        raise ValueError(f"invalid fleets: {len(fleets)} fleets, expected 1 to {MAX_FLEETS}")
    given = [_fields(f"fleets[{index}]", fleet, _FLEET) for index, fleet in enumerate(fleets)]
    for index, fleet in enumerate(given):
        for key in ("name", "region", "port"):
            if key not in fleet:
                raise ValueError(f"missing field fleets[{index}].{key}")
    scaled = top.pop("scaled", None) or []
    if not isinstance(scaled, list) or len(scaled) > MAX_SCALED:
        raise ValueError(
            f"invalid scaled {shown(scaled)}: expected a list of at most {MAX_SCALED} servers"
        )
    wanted = [_fields(f"scaled[{index}]", item, _SCALED) for index, item in enumerate(scaled)]
    for index, item in enumerate(wanted):
        if "server" not in item:
            raise ValueError(f"missing field scaled[{index}].server")
    topology = Topology(
        fleets=tuple(Fleet(**fleet) for fleet in given),
        scaled=tuple(Scaled(**item) for item in wanted),
        **_fields("control_plane", top.pop("control_plane", {}), _CONTROL_PLANE),
        kube=KubeConfig(**top),
    )
    topology.kube.validate(flags=False)
    topology.validate()
    return topology


class _Loader(yaml.SafeLoader):
    """YAML read as plain data: refuses anchors and aliases (a few hundred bytes of them expand
    to a billion items), tags and a key given twice; resolves only null, booleans and whole
    numbers of at most :data:`MAX_DIGITS` digits (YAML 1.2's forms), all else is a string."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML's stubs
        if getattr(event, "anchor", None) is not None:
            mark = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _refused(
                event,
                f"YAML anchors and aliases are not allowed: {shown(mark + event.anchor)}",
            )
        if getattr(event, "tag", None) is not None:
            raise _refused(event, f"YAML tags are not allowed: {shown(event.tag)}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | bool) or key is None:
                if key in seen:
                    raise _refused(key_node, f"duplicate key {shown(key)}")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_whole(self, node: Any) -> int:
        return int(self.construct_scalar(node))  # decimal: "017" is 17, as in YAML 1.2


def _refused(at: yaml.Event | yaml.Node, problem: str) -> ValueError:
    where = f" at line {at.start_mark.line + 1}" if at.start_mark else ""
    return ValueError(f"invalid topology{where}: {problem}")


_Loader.yaml_implicit_resolvers = {}  # only those added here
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(rf"^[-+]?[0-9]{{1,{MAX_DIGITS}}}$"), list("-+0123456789")
)
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_whole)


def load(text: str | bytes) -> Topology:
    """A topology from a file's text (YAML, or JSON, which YAML reads), at most
    :data:`MAX_BYTES`, read as plain data (:class:`_Loader`)."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise ValueError(f"invalid topology: {size} bytes, at most {MAX_BYTES}")
    try:
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader, narrowed
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
