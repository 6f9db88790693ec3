"""`routeplane deploy kubernetes`: manifests for a user's own topology file (not the demo's),
valid under the pinned Kubernetes schemas like the committed deploy/ (test_kubernetes.py), a
bad topology file (hostile YAML included) refused in one line naming the field and the value,
and an --out that cannot be written refused in one line naming the path, nothing written."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from control_plane.bootstrap import render
from control_plane.deploy.kubernetes import KUBERNETES_VERSION, TLS_DIR, validate
from control_plane.deploy.topology import MAX_BYTES, MAX_FLEETS, load
from control_plane.identity import SPIFFE_PREFIX
from harness.processes import ROUTEPLANE

URL = "spanner://projects/acme/instances/edge/databases/routes"
TOPOLOGY = f"""
namespace: acme-edge
image: ghcr.io/acme/routeplane:1
registry: {URL}
gcp_service_account: rp@acme.iam.gserviceaccount.com
control_plane: {{xds_port: 15010, admin_port: 15011, replicas: 3}}
fleets:
  - {{name: gateway-eu, region: europe-west1, port: 8443, replicas: 4, cluster: public}}
  - {{name: gateway-asia, region: asia-east1, port: 8080, admin_port: 9000}}
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROUTEPLANE, "deploy", "kubernetes", *args], capture_output=True, text=True, timeout=120
    )


def _documents(out: Path, name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((out / "deploy/kubernetes" / name).read_text()) if d]


def _find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = (d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)
    return found


def test_a_users_topology_renders_valid_manifests_for_its_fleets_ports_and_replicas(
    tmp_path: Path,
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    out = tmp_path / "out"
    result = _run("--topology", str(topology), "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("namespace", "routeplane", "registry-init", "envoy", "prometheus"):
        for document in _documents(out, f"{name}.yaml"):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            assert document["metadata"].get("namespace", "acme-edge") == "acme-edge"
    assert json.loads((out / "deploy/grafana/routeplane.json").read_text())["uid"] == "routeplane"

    control_plane = _documents(out, "routeplane.yaml")
    deployment = _find(control_plane, "Deployment", "routeplane")
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/acme/routeplane:1"
    command = container["command"]
    assert command[command.index("--registry") + 1] == URL
    assert command[command.index("--xds-listen") + 1] == "0.0.0.0:15010"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "xds": 15010,
        "admin": 15011,
        "keda": 18002,  # KEDA's scaler (serve --keda-listen), the default port
    }
    xds = "routeplane-xds.acme-edge.svc.cluster.local:15010"

    envoys = _documents(out, "envoy.yaml")
    fleets = [
        ("gateway-eu", "europe-west1", "public", 8443, 9901, 4),
        ("gateway-asia", "asia-east1", "edge", 8080, 9000, 2),
    ]
    assert {d["metadata"]["name"] for d in envoys if d["kind"] == "Deployment"} == {
        name for name, *_ in fleets
    }
    secrets = set()
    for name, region, cluster, port, admin, replicas in fleets:
        fleet = _find(envoys, "Deployment", name)
        assert fleet["spec"]["replicas"] == replicas
        pod = fleet["spec"]["template"]["spec"]
        assert pod["containers"][0]["ports"] == [{"name": "http", "containerPort": port}]
        secrets |= {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        service = _find(envoys, "Service", name)
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        ((_, bootstrap),) = _find(envoys, "ConfigMap", f"{name}-bootstrap")["data"].items()
        assert bootstrap == render(
            node_id=f"{cluster}-{region}",
            cluster=cluster,
            region=region,
            xds=[xds],
            listen=f"0.0.0.0:{port}",
            admin=f"127.0.0.1:{admin}",
            delta=True,
            tls=(f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"),
        )
    # one client certificate per node cluster, issuing the Secret its fleets mount
    certificates = {
        d["spec"]["secretName"]: d["spec"]
        for d in _documents(out, "cert-manager.yaml")
        if d["kind"] == "Certificate"
    }
    assert secrets == {"routeplane-public-tls", "routeplane-edge-tls"}
    for cluster in ("public", "edge"):
        assert certificates[f"routeplane-{cluster}-tls"]["uris"] == [f"{SPIFFE_PREFIX}{cluster}"]
    assert xds.split(":")[0] in certificates["routeplane-xds-tls"]["dnsNames"]


def test_flags_override_the_files_settings_and_a_bad_flag_is_named(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    printed = _run("--topology", str(topology), "--namespace", "other")
    assert printed.returncode == 0, printed.stderr
    documents = [d for d in yaml.safe_load_all(printed.stdout) if d]
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in documents} == {"other"}
    refused = _run("--topology", str(topology), "--registry", "sqlite:///x.db")
    assert refused.returncode == 1
    assert refused.stderr == (
        "error: invalid --registry 'sqlite:///x.db': expected "
        "spanner://projects/P/instances/I/databases/D (replicas share one Spanner database)\n"
    )


def test_a_bad_topology_file_is_refused_in_one_line_naming_the_field_and_value(
    tmp_path: Path,
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY.replace("port: 8080", "port: 0"))
    out = tmp_path / "out"
    result = _run("--topology", str(topology), "--out", str(out))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: --topology {topology}: invalid fleets[1].port 0: expected a port from 1 to 65535\n"
    )
    assert result.stdout == ""
    assert not out.exists()


def test_an_out_that_cannot_be_made_is_one_line_naming_the_path(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    result = _run("--topology", str(topology), "--out", "/proc/self/nope")
    assert result.returncode == 1
    assert result.stderr == "error: cannot write /proc/self/nope: No such file or directory\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("occupied", "problem"),
    [("deploy", "Not a directory"), ("deploy/grafana/routeplane.json", "Is a directory")],
    ids=["a file where a directory goes", "a directory where a file goes"],
)
def test_a_path_in_the_way_is_one_line_naming_it_and_nothing_is_written(
    tmp_path: Path, occupied: str, problem: str
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    out = tmp_path / "out"
    if problem == "Is a directory":
        (out / occupied).mkdir(parents=True)
    else:
        out.mkdir()
        (out / occupied).write_text("mine\n")
    before = sorted(out.rglob("*"))
    result = _run("--topology", str(topology), "--out", str(out))
    assert result.returncode == 1
    assert result.stderr == f"error: cannot write {out / occupied}: {problem}\n"
    assert result.stdout == ""
    assert sorted(out.rglob("*")) == before
    if problem == "Not a directory":
        assert (out / occupied).read_text() == "mine\n"


@pytest.mark.parametrize(("cluster", "taken"), [("xds", "routeplane-xds"), ("ca", "routeplane-ca")])
def test_a_node_cluster_whose_certificate_would_replace_the_control_planes_is_refused(
    tmp_path: Path, cluster: str, taken: str
) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(f"fleets: [{{name: gw, region: eu, port: 8080, cluster: {cluster}}}]\n")
    out = tmp_path / "out"
    result = _run("--topology", str(topology), "--out", str(out))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: --topology {topology}: invalid fleets[0].cluster '{cluster}': its client "
        f"certificate would take the name {taken}, which the control plane's own objects use\n"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "name", ["routeplane-ca", "routeplane-selfsigned", "routeplane-prometheus-scrape"]
)
def test_a_fleet_named_like_one_of_the_control_planes_objects_is_refused(name: str) -> None:
    message = f"invalid fleets[0].name '{name}': the control plane's objects use it"
    with pytest.raises(ValueError, match=re.escape(message)):
        validate(load(f"fleets: [{{name: {name}, region: eu, port: 8080}}]"))


def test_an_empty_out_is_refused_not_taken_for_none(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    result = _run("--topology", str(topology), "--out", "")
    assert result.returncode == 1
    assert result.stderr == "error: invalid --out '': expected a directory\n"
    assert result.stdout == ""


def test_an_alias_bomb_is_refused_in_one_line_before_it_expands(tmp_path: Path) -> None:
    topology = tmp_path / "topology.yaml"
    topology.write_text(BOMB)
    assert len(BOMB) < 500
    result = _run("--topology", str(topology))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: --topology {topology}: invalid topology at line 1: YAML anchors and aliases "
        "are not allowed: '&p0'\n"
    )
    assert result.stdout == ""


FLEET = "{name: gw, region: eu, port: 8080}"
# 447 bytes that expand to 10**9 items if the aliases are followed (and echoed in an error)
BOMB = (
    "fleets: {a0: &p0 [x,x,x,x,x,x,x,x,x,x], "
    + ", ".join(f"a{i}: &p{i} [{','.join([f'*p{i - 1}'] * 10)}]" for i in range(1, 9))
    + "}"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fleets: []", "invalid fleets: 0 fleets"),
        ("fleets: 3", "invalid fleets 3: expected a list"),
        ("control_plane: {xds_port: 1}", "invalid fleets None"),
        ("fleets: [{name: gw, region: eu, prot: 1}]", "unknown field 'fleets[0].prot'"),
        ("fleets: [{name: gw, region: eu}]", "missing field fleets[0].port"),
        ("fleets: [{name: gw, region: eu, port: true}]", "invalid fleets[0].port True"),
        ("fleets: [{name: gw, region: eu, port: 70000}]", "invalid fleets[0].port 70000"),
        ("fleets: [{name: Gw, region: eu, port: 1}]", "invalid fleets[0].name 'Gw'"),
        ("fleets: [{name: routeplane-xds, region: eu, port: 1}]", "'routeplane-xds': the control"),
        (f"fleets: [{FLEET}, {FLEET}]", "invalid fleets[1].name 'gw': another fleet has it"),
        ("fleets: [{name: gw, region: EU, port: 1}]", "invalid fleets[0].region 'EU'"),
        ("fleets: [{name: gw, region: eu, port: 1, cluster: 7}]", "invalid fleets[0].cluster 7"),
        (
            "fleets: [{name: gw, region: eu, port: 9901}]",
            "invalid fleets[0].admin_port 9901: the listener's port",
        ),
        ("fleets: [{name: gw, region: eu, port: 1, replicas: 0}]", "fleets[0].replicas 0"),
        (f"control_plane: {{replicas: 1001}}\nfleets: [{FLEET}]", "control_plane.replicas 1001"),
        (f"control_plane: {{admin_port: 18000}}\nfleets: [{FLEET}]", "admin_port 18000: the xDS"),
        (f"control_plane: {{grace: 1}}\nfleets: [{FLEET}]", "unknown field 'control_plane.grace'"),
        (f"namespace: Edge\nfleets: [{FLEET}]", "invalid namespace 'Edge'"),
        (f"image: ''\nfleets: [{FLEET}]", "invalid image ''"),
        (f"fleets: [{FLEET}]\nregion: eu", "unknown field 'region'"),
        ("[1, 2]", "invalid topology: expected a mapping"),
        ("fleets: [", "not YAML or JSON at line 1"),
        ("[" * 20_000 + "]" * 20_000, "nested too deep"),
        ("fleets: [" + ", ".join([FLEET] * (MAX_FLEETS + 1)) + "]", "65 fleets, expected 1 to 64"),
        ("#" * MAX_BYTES + "\n", f"{MAX_BYTES + 1} bytes, at most {MAX_BYTES}"),
        (BOMB, "invalid topology at line 1: YAML anchors and aliases are not allowed: '&p0'"),
        (f"fleets: &f [{FLEET}]", "at line 1: YAML anchors and aliases are not allowed: '&f'"),
        (f"fleets: [{FLEET}]\nfleets: []", "invalid topology at line 2: duplicate key 'fleets'"),
        ("fleets: [{name: gw, region: eu, port: 1, port: 2}]", "line 1: duplicate key 'port'"),
        ("fleets: [{name: gw, region: eu, port: !!int 1}]", "YAML tags are not allowed"),
        (
            "fleets: [{name: gw, region: eu, port: 1" + "0" * 5000 + "}]",
            "invalid fleets[0].port '1000",
        ),
        (
            "fleets: [{name: gw, region: eu, port: 1, replicas: 2001-13-45}]",
            "invalid fleets[0].replicas '2001-13-45': expected a whole number",
        ),
        ("fleets: [{name: gw, region: eu, port: 8.5}]", "invalid fleets[0].port '8.5'"),
        (
            f"namespace: {'a' * 60_000}\nfleets: [{FLEET}]",
            "invalid namespace 'aaaa",
        ),
        (
            "fleets: {" + ", ".join(f"k{i}: [{'x, ' * 20}x]" for i in range(20)) + "}",
            "invalid fleets {'k0': ['x', 'x', 'x', 'x', ...], ",
        ),
        (
            f'registry: "spanner://projects/acme/instances/ed\\nge/databases/routes"\n'
            f"fleets: [{FLEET}]",
            "invalid registry 'spanner://projects/acme/instances/ed\\nge/",
        ),
        (f'image: "a\\0b"\nfleets: [{FLEET}]', "invalid image 'a\\x00b'"),
        (
            f'gcp_service_account: "a\\eb@p.iam.gserviceaccount.com"\nfleets: [{FLEET}]',
            "invalid gcp_service_account 'a\\x1bb@p",
        ),
    ],
    ids=[
        "no fleet",
        "fleets not a list",
        "fleets missing",
        "unknown fleet field",
        "no port",
        "port a boolean",
        "port out of range",
        "name not a label",
        "name of the control plane's service",
        "names twice",
        "bad region",
        "cluster not a string",
        "admin on the listener's port",
        "no replica",
        "too many control-plane replicas",
        "control-plane ports equal",
        "unknown control-plane field",
        "bad namespace",
        "empty image",
        "unknown top-level field",
        "not a mapping",
        "not yaml",
        "nested too deep",
        "too many fleets",
        "too many bytes",
        "an alias bomb",
        "an anchor",
        "a key twice",
        "a fleet's key twice",
        "a tag",
        "a number of 5001 digits",
        "a date that is not one",
        "a fraction",
        "a long value",
        "a big value",
        "a registry with a newline",
        "an image with a NUL",
        "a service account with an escape",
    ],
)
def test_a_bad_topology_is_refused_naming_the_field_and_value(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        load(text)
    assert "\n" not in str(refused.value)
    assert len(str(refused.value)) < 200  # a bad value is echoed cut short


def test_the_demos_empty_out_is_refused_too() -> None:
    result = subprocess.run(
        [ROUTEPLANE, "mesh", "kubernetes", "--out", ""], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr == "error: invalid --out '': expected a directory\n"
    assert result.stdout == ""
