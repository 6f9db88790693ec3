"""deploy/kubernetes: no cluster runs here, so the manifests are checked, not applied: they must
be what `mesh kubernetes` generates, valid under the Kubernetes schemas of a pinned version
(kubernetes-validate, strict: unknown fields fail), and say what the issue asks of them. The
pods' commands are run outside a cluster in tests/integration/deploy/test_kubernetes_pods.py."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from control_plane.app import ServeConfig
from control_plane.bootstrap import render
from control_plane.deploy.kubernetes import (
    KUBERNETES_VERSION,
    TLS_DIR,
    kubernetes_files,
    shutdown_seconds,
    xds_service_address,
)
from control_plane.deploy.topology import KubeConfig
from control_plane.dev.mesh import ENVOYS, ROOT, MeshConfig, topology
from control_plane.identity import SPIFFE_PREFIX
from harness.processes import ROUTEPLANE

DEPLOY = ROOT / "deploy" / "kubernetes"
# cert-manager's kinds are CRDs: kubernetes-validate has only the built-in kinds' schemas, so
# that file is checked for the shape cert-manager needs (below), not against a schema.
CRD_FILES = {"cert-manager.yaml", "keda.yaml"}
CFG = MeshConfig(workdir=Path(".mesh"))
TOPOLOGY = topology(CFG)


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _all() -> dict[str, list[dict[str, Any]]]:
    return {path.name: _documents(path.name) for path in sorted(DEPLOY.glob("*.yaml"))}


def _find(kind: str, name: str) -> dict[str, Any]:
    for documents in _all().values():
        for document in documents:
            if document["kind"] == kind and document["metadata"]["name"] == name:
                return document
    raise AssertionError(f"no {kind} {name} in {DEPLOY}")


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']} {d['metadata']['name']}", d["spec"]["template"]["spec"])
        for documents in _all().values()
        for d in documents
        if d["kind"] in ("Deployment", "Job")
    ]


def test_the_committed_deploy_files_are_generated_from_the_topology() -> None:
    files = kubernetes_files(TOPOLOGY)
    assert {p for p in files if p.parent == Path("deploy/kubernetes")} == {
        Path("deploy/kubernetes") / p.name for p in DEPLOY.glob("*.yaml")
    }
    for path, text in files.items():
        assert (ROOT / path).read_text() == text, (
            f"{path} is stale: run `routeplane mesh kubernetes --write`"
        )


@pytest.mark.parametrize(
    "name", sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name not in CRD_FILES)
)
def test_every_manifest_is_valid_under_the_pinned_kubernetes_schemas(name: str) -> None:
    for document in _documents(name):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("spec", "replicas"), "two"),
        (("spec", "template", "spec", "containers", 0, "readinessProbe", "httpGet", "path"), 5),
        (("spec", "template", "spec", "containers", 0, "securityContext", "readOnlyRoot"), True),
    ],
    ids=["wrong type", "wrong type deep down", "unknown field"],
)
def test_the_schema_check_refuses_a_broken_deployment(
    where: tuple[str | int, ...], value: object
) -> None:
    broken = copy.deepcopy(_find("Deployment", "routeplane"))
    node: Any = broken
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_control_plane_runs_two_replicas_apart_with_a_disruption_budget() -> None:
    deployment = _find("Deployment", "routeplane")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (required,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    assert required["labelSelector"]["matchLabels"] == labels
    budget = _find("PodDisruptionBudget", "routeplane")
    assert budget["spec"]["selector"]["matchLabels"] == labels
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_probes_use_the_admin_port_serve_listens_on() -> None:
    pod = _find("Deployment", "routeplane")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["routeplane", "serve"]
    admin_port = int(command[command.index("--admin-listen") + 1].rsplit(":", 1)[1])
    xds_port = int(command[command.index("--xds-listen") + 1].rsplit(":", 1)[1])
    keda_port = int(command[command.index("--keda-listen") + 1].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"admin": admin_port, "xds": xds_port, "keda": keda_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # /metrics needs the token off loopback; the probes' paths stay open (admin/http.py)
    env = {e["name"]: e for e in container["env"]}
    assert env["ROUTEPLANE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"


def test_the_grace_period_covers_serves_shutdown() -> None:
    pod = _find("Deployment", "routeplane")["spec"]["template"]["spec"]
    grace = next(f.default for f in dataclasses.fields(ServeConfig) if f.name == "grace_seconds")
    assert isinstance(grace, float)
    assert pod["terminationGracePeriodSeconds"] == shutdown_seconds()
    assert pod["terminationGracePeriodSeconds"] > grace + 1  # xDS grace, then admin's 1 s


@pytest.mark.parametrize("which", [name for name, _ in _pod_specs()])
def test_every_pod_runs_as_non_root_on_a_read_only_root(which: str) -> None:
    pod = dict(_pod_specs())[which]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for mount in container["volumeMounts"]:
            volume = volumes[mount["name"]]
            # the only writable place is an emptyDir; Secrets and ConfigMaps are read-only
            assert "emptyDir" in volume or mount.get("readOnly") is True, mount


def test_services_select_the_pods_and_ports_they_name() -> None:
    deployments = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for documents in _all().values()
        for d in documents
        if d["kind"] == "Deployment"
    }
    services = [d for documents in _all().values() for d in documents if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} >= {"routeplane-xds", "routeplane-admin"}
    for service in services:
        deployment = deployments[service["spec"]["selector"]["app.kubernetes.io/component"]]
        pod = deployment["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        named = {
            p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"], service["metadata"]["name"]


def test_spanner_is_reached_through_workload_identity_with_no_key_file() -> None:
    account = _find("ServiceAccount", "routeplane")
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com"
    )
    for which, pod in _pod_specs():
        if pod["containers"][0]["image"].startswith("routeplane"):
            assert pod["serviceAccountName"] == "routeplane", which
        for container in pod["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert "GOOGLE_APPLICATION_CREDENTIALS" not in names
            assert "SPANNER_EMULATOR_HOST" not in names


@pytest.mark.parametrize("envoy", ENVOYS, ids=[e.name for e in ENVOYS])
def test_envoy_gets_the_bootstrap_routeplane_bootstrap_renders_for_the_xds_service(
    envoy: Any,
) -> None:
    config_map = _find("ConfigMap", f"{envoy.name}-bootstrap")
    ((filename, bootstrap),) = config_map["data"].items()
    xds = xds_service_address(TOPOLOGY)
    listen = CFG.envoy_port + envoy.offset
    assert bootstrap == render(
        node_id=f"edge-{envoy.region}",
        cluster="edge",
        region=envoy.region,
        xds=[xds],
        listen=f"0.0.0.0:{listen}",
        admin=f"127.0.0.1:{CFG.envoy_admin_port + envoy.offset}",
        delta=True,
        tls=(f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"),
    )
    # the same text as the CLI prints
    printed = subprocess.run(
        [
            ROUTEPLANE,
            "bootstrap",
            *("--node-id", f"edge-{envoy.region}", "--region", envoy.region, "--xds", xds),
            *("--listen", f"0.0.0.0:{listen}"),
            *("--admin", f"127.0.0.1:{CFG.envoy_admin_port + envoy.offset}"),
            *("--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"),
            *("--ca", f"{TLS_DIR}/ca.crt"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == bootstrap
    host, port = xds.rsplit(":", 1)
    service_name = host.split(".")[0]
    service = _find("Service", service_name)
    assert host == f"{service_name}.{service['metadata']['namespace']}.svc.cluster.local"
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]

    pod = _find("Deployment", envoy.name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    command = container["command"]
    config_path = Path(command[command.index("-c") + 1])
    bootstrap_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[bootstrap_volume]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path == Path(mounts[bootstrap_volume]) / filename
    assert command[command.index("--service-node") + 1] == "$(POD_NAME)"
    assert container["ports"] == [{"name": "http", "containerPort": listen}]
    tls_volume = next(n for n, v in volumes.items() if "secret" in v)
    assert mounts[tls_volume] == TLS_DIR


def test_cert_manager_issues_the_secrets_the_pods_mount_with_the_keys_they_read() -> None:
    documents = _documents("cert-manager.yaml")
    issuers = {d["metadata"]["name"] for d in documents if d["kind"] == "Issuer"}
    certificates = {d["spec"]["secretName"]: d for d in documents if d["kind"] == "Certificate"}
    for document in documents:
        assert document["apiVersion"] == "cert-manager.io/v1"
        assert document["kind"] in ("Issuer", "Certificate")
        if document["kind"] == "Certificate":
            spec = document["spec"]
            assert spec["issuerRef"]["name"] in issuers
            assert spec.get("dnsNames") or spec.get("uris") or spec.get("commonName")
    mounted = {
        v["secret"]["secretName"]
        for _, pod in _pod_specs()
        for v in pod["volumes"]
        if "secret" in v
    }
    assert mounted <= set(certificates)
    xds = _find("Deployment", "routeplane")["spec"]["template"]["spec"]["containers"][0]
    # cert-manager's Secret keys: tls.crt, tls.key and the issuing CA as ca.crt
    assert {
        xds["command"][xds["command"].index(flag) + 1]
        for flag in ("--tls-cert", "--tls-key", "--client-ca")
    } == {f"{TLS_DIR}/{key}" for key in ("tls.crt", "tls.key", "ca.crt")}
    server = certificates["routeplane-xds-tls"]["spec"]
    assert xds_service_address(TOPOLOGY).split(":")[0] in server["dnsNames"]
    client = certificates["routeplane-edge-tls"]["spec"]
    assert client["uris"] == [f"{SPIFFE_PREFIX}edge"]  # the fleet the xDS server checks


def test_the_prometheus_job_keeps_the_control_planes_admin_port() -> None:
    (config_map,) = _documents("prometheus.yaml")
    ((_, text),) = config_map["data"].items()
    (job,) = yaml.safe_load(text)["scrape_configs"]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    pod = _find("Deployment", "routeplane")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    ports = [p["name"] for p in pod["spec"]["containers"][0]["ports"]]
    assert keep["regex"] == f"{labels['app.kubernetes.io/component']};admin"
    assert "admin" in ports
    assert job["authorization"]["credentials_file"].endswith("/token")


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"registry": "sqlite:///tmp/registry.db"}, "--registry"),
        ({"namespace": "Route_Plane"}, "--namespace"),
        ({"image": ""}, "--image"),
        ({"gcp_service_account": "routeplane"}, "--gcp-service-account"),
    ],
    ids=["sqlite registry", "bad namespace", "no image", "bad service account"],
)
def test_bad_settings_are_refused_naming_the_flag(change: dict[str, str], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        KubeConfig(**change).validate()


def test_the_command_generates_manifests_for_an_operators_own_project(tmp_path: Path) -> None:
    url = "spanner://projects/acme/instances/edge/databases/routes"
    result = subprocess.run(
        [
            ROUTEPLANE,
            "mesh",
            "kubernetes",
            *("--out", str(tmp_path), "--registry", url, "--image", "ghcr.io/acme/rp:1"),
            *("--gcp-service-account", "rp@acme.iam.gserviceaccount.com", "--namespace", "edge"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "deploy/kubernetes/routeplane.yaml" in result.stdout
    text = "---\n".join(
        (tmp_path / "deploy/kubernetes" / name).read_text()
        for name in ("namespace.yaml", "routeplane.yaml")
    )
    assert "PROJECT_ID" not in text
    assert "rp@acme.iam.gserviceaccount.com" in text
    assert url in text
    assert "ghcr.io/acme/rp:1" in text
    envoy = (tmp_path / "deploy/kubernetes/envoy.yaml").read_text()
    assert "routeplane-xds.edge.svc.cluster.local" in envoy
    for document in yaml.safe_load_all(text + "---\n" + envoy):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    refused = subprocess.run(
        [ROUTEPLANE, "mesh", "kubernetes", "--registry", "sqlite:///x.db"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "--registry 'sqlite:///x.db'" in refused.stderr
