"""KEDA's objects in the generated manifests (``deploy/kubernetes/keda.yaml``): a ScaledObject
per scaled server, ``external-push`` to the control plane's KEDA Service, whose port the
Deployment and ``serve --keda-listen`` use; KEDA's client certificate for the mTLS port. KEDA's
kinds are CRDs that ``kubernetes-validate`` does not know: checked here for the shape KEDA
needs, not against a schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.deploy.kubernetes import KEDA_TLS_SECRET, keda, kubernetes_files
from control_plane.deploy.topology import MAX_SCALED, load
from control_plane.dev.mesh import ROOT, MeshConfig, topology
from control_plane.keda.service import METRIC

DEPLOY = ROOT / "deploy" / "kubernetes"
FLEET = "{name: gw, region: eu, port: 8080}"


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def _serve_flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_each_sample_server_with_a_rule_has_a_scaled_object_pushing_from_the_keda_port() -> None:
    (deployment,) = (d for d in _documents("routeplane.yaml") if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "keda")
    assert _serve_flag(container["command"], "--keda-listen") == f"0.0.0.0:{port}"
    (service,) = (
        d
        for d in _documents("routeplane.yaml")
        if d["kind"] == "Service" and d["metadata"]["name"] == "routeplane-keda"
    )
    assert service["spec"]["ports"] == [{"name": "keda", "port": port, "targetPort": "keda"}]
    objects = {d["metadata"]["name"]: d for d in _documents("keda.yaml")}
    assert objects["routeplane-keda"]["kind"] == "TriggerAuthentication"
    # The sample servers with an autoscaling rule (servers.yaml): echo (0-7) and gpu (0-2).
    scaled = {n: d for n, d in objects.items() if d["kind"] == "ScaledObject"}
    assert {
        n: (d["spec"]["minReplicaCount"], d["spec"]["maxReplicaCount"]) for n, d in scaled.items()
    } == {"echo": (0, 7), "gpu": (0, 2)}
    for name, document in scaled.items():
        spec = document["spec"]
        assert spec["scaleTargetRef"] == {"name": name}
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "external-push"
        assert trigger["metricType"] == "AverageValue"  # ceil(metric / target)
        assert trigger["metadata"] == {
            "scalerAddress": f"routeplane-keda.routeplane.svc.cluster.local:{port}",
            "server": name,
        }
        assert trigger["authenticationRef"] == {"name": "routeplane-keda"}
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 0
        assert spec["cooldownPeriod"] == 0
    assert METRIC  # what the trigger's HPA follows (GetMetricSpec names it)


def test_keda_gets_a_client_certificate_and_the_server_certificate_names_the_keda_service() -> None:
    documents = _documents("cert-manager.yaml")
    certificates = {d["spec"]["secretName"]: d for d in documents if d["kind"] == "Certificate"}
    client = certificates[KEDA_TLS_SECRET]["spec"]
    assert "client auth" in client["usages"]
    assert client["issuerRef"] == {"name": "routeplane-ca", "kind": "Issuer"}
    server = certificates["routeplane-xds-tls"]["spec"]
    assert "routeplane-keda.routeplane.svc.cluster.local" in server["dnsNames"]
    (auth,) = (d for d in _documents("keda.yaml") if d["kind"] == "TriggerAuthentication")
    assert {(r["parameter"], r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]} == {
        ("caCert", KEDA_TLS_SECRET, "ca.crt"),
        ("tlsClientCert", KEDA_TLS_SECRET, "tls.crt"),
        ("tlsClientKey", KEDA_TLS_SECRET, "tls.key"),
    }


def test_a_users_topology_names_the_servers_keda_scales() -> None:
    plan = load(
        "namespace: acme\ncontrol_plane: {keda_port: 15012}\n"
        f"fleets: [{FLEET}]\n"
        "scaled:\n"
        "  - {server: api, deployment: api-pods, min_replicas: 1, max_replicas: 30}\n"
        "  - {server: api, region: eu, deployment: api-eu}\n"
    )
    files = kubernetes_files(plan)
    assert Path("deploy/kubernetes/keda.yaml") in files
    objects = {d["metadata"]["name"]: d for d in keda(plan)}
    assert objects["api-pods"]["spec"]["scaleTargetRef"] == {"name": "api-pods"}
    assert objects["api-pods"]["spec"]["minReplicaCount"] == 1
    assert objects["api-eu-eu"]["spec"]["triggers"][0]["metadata"] == {
        "scalerAddress": "routeplane-keda.acme.svc.cluster.local:15012",
        "server": "api",
        "region": "eu",
    }


def test_the_mesh_topology_scales_the_sample_servers() -> None:
    assert {s.server for s in topology(MeshConfig(workdir=Path(".mesh"))).scaled} == {
        "echo",
        "gpu",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scaled: 3", "invalid scaled 3: expected a list"),
        ("scaled: [{deployment: x}]", "missing field scaled[0].server"),
        ("scaled: [{server: Api}]", "invalid scaled[0].server 'Api'"),
        ("scaled: [{server: api, deployment: 'a b'}]", "invalid scaled[0].deployment 'a b'"),
        ("scaled: [{server: api, region: EU}]", "invalid scaled[0].region 'EU'"),
        ("scaled: [{server: api, speed: 1}]", "unknown field 'scaled[0].speed'"),
        ("scaled: [{server: api}, {server: api}]", "invalid scaled[1].server 'api': scaled twice"),
        ("scaled: [{server: api, min_replicas: -1}]", "invalid scaled[0].min_replicas -1"),
        ("scaled: [{server: api, max_replicas: 0}]", "invalid scaled[0].max_replicas 0"),
        (
            "scaled: [{server: api, min_replicas: 5, max_replicas: 2}]",
            "invalid scaled[0].max_replicas 2: below min_replicas 5",
        ),
        ("scaled: [{server: api, max_replicas: x}]", "invalid scaled[0].max_replicas 'x'"),
        ("control_plane: {keda_port: 18000}", "invalid control_plane.keda_port 18000"),
        ("control_plane: {keda_port: 0}", "invalid control_plane.keda_port 0"),
        (
            "scaled: [" + ", ".join(f"{{server: s{i}}}" for i in range(MAX_SCALED + 1)) + "]",
            f"expected a list of at most {MAX_SCALED} servers",
        ),
        (f"scaled: [{{server: {'a' * 60_000}}}]", "invalid scaled[0].server 'aaaa"),
    ],
    ids=[
        "not a list",
        "no server",
        "uppercase server",
        "bad deployment",
        "bad region",
        "unknown field",
        "twice",
        "negative min",
        "zero max",
        "max below min",
        "max not a number",
        "keda port is xds",
        "keda port 0",
        "too many",
        "huge server",
    ],
)
def test_a_bad_scaled_entry_is_refused_naming_the_field_and_value(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        load(f"fleets: [{FLEET}]\n{text}")
    assert "\n" not in str(refused.value)
    assert len(str(refused.value)) < 200
