"""deploy/kubernetes, run as far as it can be outside a cluster: the control plane's container
command and the Envoy container's command with the bootstrap from its ConfigMap, as the
manifests give them, on the Spanner emulator, each confined as its securityContext says (its own
mount namespace: the root filesystem read-only, a tmpfs for every emptyDir, the manifest's
non-root uid, no capabilities, no new privileges). Only what a cluster would provide is
replaced: the Secrets' files (dev certificates in cert-manager's layout, mode 0644 as Secret
volumes have it), the token Secret (the environment), Spanner (the emulator), the Service's DNS
name and every 0.0.0.0 port (free loopback ports here), and $(POD_NAME)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.deploy.kubernetes import TLS_DIR, shutdown_seconds, xds_service_address
from control_plane.deploy.topology import KubeConfig
from control_plane.dev.certs import dev_certs
from control_plane.dev.mesh import ENVOYS, ROOT, MeshConfig, topology
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ENVOY, ROUTEPLANE, ControlPlane, Envoy, http_get
from harness.waiting import free_port, wait_until

pytestmark = pytest.mark.envoy
DEPLOY = ROOT / "deploy" / "kubernetes"
CFG = MeshConfig(workdir=Path(".mesh"))


def _find(name: str, kind: str, metadata_name: str) -> dict[str, Any]:
    for document in yaml.safe_load_all((DEPLOY / name).read_text()):
        if document and document["kind"] == kind and document["metadata"]["name"] == metadata_name:
            return document
    raise AssertionError(f"no {kind} {metadata_name} in {name}")


def _secret_dir(path: Path, certs: Path, cert: str) -> Path:
    """A Secret as cert-manager writes it, mounted: tls.crt, tls.key and the CA as ca.crt."""
    path.mkdir(mode=0o755)
    shutil.copy(certs / f"{cert}.pem", path / "tls.crt")
    shutil.copy(certs / f"{cert}-key.pem", path / "tls.key")
    shutil.copy(certs / "ca.pem", path / "ca.crt")
    for file in path.iterdir():
        file.chmod(0o644)  # a Secret volume's default mode
    return path


CONFINE = """set -e
# A checkout under an emptyDir's path (CI may clone into /tmp) stays visible: it is held
# aside, the tmpfs goes on, and it is bound back at its own path (the image has no checkout).
hold=""
if [ -n "$RP_KEEP" ]; then
  hold=$(mktemp -d /var/tmp/routeplane-hold.XXXXXX)
  mount --bind "$RP_KEEP" "$hold"
fi
for dir in $RP_EMPTY_DIRS; do mount -t tmpfs -o size=64m,mode=1777 tmpfs "$dir"; done
if [ -n "$hold" ]; then
  mkdir -p "$RP_KEEP"
  mount --bind "$hold" "$RP_KEEP"
  umount "$hold"
  rmdir "$hold"
fi
mount -o remount,bind,ro /
exec setpriv --reuid="$RP_UID" --regid="$RP_UID" --clear-groups --no-new-privs \
  --inh-caps=-all --bounding-set=-all -- "$@"
"""


def _confined(pod: dict[str, Any], container: dict[str, Any], argv: list[str]) -> list[str]:
    """``argv`` as the pod spec runs it: the root filesystem read-only, a tmpfs on every
    emptyDir mount, as the non-root uid, with no capabilities. One process: unshare, sh and
    setpriv each exec the next, so the PID is the program's own."""
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    dirs = " ".join(m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty)
    checkout = Path(__file__).resolve().parents[3]
    under = [d for d in dirs.split() if checkout.is_relative_to(d)]
    keep = str(checkout) if under else ""
    script = (
        f"export RP_UID={int(security['runAsUser'])} RP_EMPTY_DIRS='{dirs}' RP_KEEP='{keep}'\n"
        f"{CONFINE}"
    )
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *argv]


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """Files the confined processes read: not under /tmp, which their emptyDir hides."""
    try:
        subprocess.run(
            ["unshare", "--mount", "--", "mount", "-t", "tmpfs", "tmpfs", "/tmp"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = f"mount namespaces are not available here (needs root): {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the manifests' commands in a mount namespace: {reason}")
        pytest.skip(reason)
    path = Path(tempfile.mkdtemp(prefix="routeplane-k8s-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _confinement(pid: int) -> tuple[int, bool, set[str]]:
    """A running process's uid, whether its root is read-only, and its tmpfs mounts."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    root_ro, tmpfs = False, set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point, options = fields[4], fields[5].split(",")
        if mount_point == "/":
            root_ro = "ro" in options
        if line.split(" - ", 1)[1].startswith("tmpfs "):
            tmpfs.add(mount_point)
    return uid, root_ro, tmpfs


def _replace(argv: list[str], replacements: dict[str, str]) -> list[str]:
    out = []
    for arg in argv:
        for old, new in replacements.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def test_the_manifests_commands_serve_probes_and_converge_an_envoy_over_mtls(
    tmp_path: Path,
    outside_tmp: Path,
    spanner_url: str,
    echo_factory: Callable[[str], EchoThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    certs = tmp_path / "certs"
    dev_certs(certs, clusters=["edge"])
    token = "k8s-test-token"
    monkeypatch.setenv("ROUTEPLANE_ADMIN_TOKEN", token)  # the Secret, as the pod's env has it

    pod = _find("routeplane.yaml", "Deployment", "routeplane")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {e["name"] for e in container["env"]} >= {"ROUTEPLANE_ADMIN_TOKEN"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    xds, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    kube = KubeConfig()
    server_tls = _secret_dir(outside_tmp / "xds-tls", certs, "server")
    argv = _replace(
        container["command"],
        {
            f"0.0.0.0:{ports['xds']}": xds,
            f"0.0.0.0:{ports['admin']}": admin,
            kube.registry: spanner_url,
            TLS_DIR: str(server_tls),
        },
    )
    assert argv[0] == "routeplane"
    cp = ControlPlane(
        argv=_confined(pod, container, [ROUTEPLANE, *argv[1:]]),
        log_path=tmp_path / "control-plane.log",
        registry=spanner_url,
        xds=xds,
        admin=admin,
    )
    registry = open_registry(spanner_url)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address=echo_factory("k8s").address, region="us-west")
    registry.close()

    envoy_plan = ENVOYS[0]
    envoy_pod = _find("envoy.yaml", "Deployment", envoy_plan.name)["spec"]["template"]["spec"]
    (envoy_container,) = envoy_pod["containers"]
    config_map = _find("envoy.yaml", "ConfigMap", f"{envoy_plan.name}-bootstrap")
    ((_, bootstrap),) = config_map["data"].items()
    host, port = xds_service_address(topology(CFG, kube)).rsplit(":", 1)
    listen_port = envoy_container["ports"][0]["containerPort"]
    listen, envoy_admin = f"127.0.0.1:{free_port()}", free_port()
    service = json.dumps({"address": host, "port_value": int(port)})
    assert service in bootstrap
    admin_line = f"port_value: {CFG.envoy_admin_port + envoy_plan.offset}\n"
    assert admin_line in bootstrap
    local = (
        bootstrap.replace(
            service, json.dumps({"address": "127.0.0.1", "port_value": int(xds.split(":")[1])})
        )
        .replace(TLS_DIR, str(_secret_dir(outside_tmp / "edge-tls", certs, "client-edge")))
        .replace(f"0.0.0.0:{listen_port}", listen)
        .replace(admin_line, f"port_value: {envoy_admin}\n")
    )
    bootstrap_path = outside_tmp / "envoy.yaml"
    bootstrap_path.write_text(local)
    bootstrap_path.chmod(0o644)  # a ConfigMap volume's default mode
    pod_name = f"{envoy_plan.name}-7d9f8c6b5-x2x4q"
    envoy_argv = _replace(
        envoy_container["command"],
        {envoy_container["command"][2]: str(bootstrap_path), "$(POD_NAME)": pod_name},
    )
    assert envoy_argv[0] == "envoy"
    envoy = Envoy(
        argv=_confined(envoy_pod, envoy_container, [ENVOY, *envoy_argv[1:]]),
        log_path=tmp_path / "envoy.log",
        listen=listen,
        admin=f"127.0.0.1:{envoy_admin}",
        node_id=pod_name,
    )
    cp.start()
    try:
        cp.wait_ready()
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "admin"
            assert http_get(f"http://{admin}{get['path']}")[0] == 200, probe
        # off loopback, /metrics needs the token the Prometheus scrape job sends
        assert http_get(f"http://{admin}/metrics")[0] == 401
        assert _confinement(cp.pid)[:2] == (container["securityContext"]["runAsUser"], True)
        assert "/tmp" in _confinement(cp.pid)[2]
        envoy.start()
        envoy.wait_live()
        assert _confinement(envoy.pid)[:2] == (
            envoy_container["securityContext"]["runAsUser"],
            True,
        )
        wait_until(lambda: envoy.get(host="echo.local") == (200, "k8s\n"), what="routing")
        proxies = subprocess.run(
            [ROUTEPLANE, "proxies", "--json", "--admin", admin],
            capture_output=True,
            text=True,
            check=True,
        )
        (proxy,) = json.loads(proxies.stdout)
        assert proxy["node_id"] == pod_name  # --service-node $(POD_NAME) names each pod
        assert {t["state"] for t in proxy["types"].values()} == {"SYNCED"}
        assert proxy["group"] == f"edge/{envoy_plan.region}@{listen}"

        # SIGTERM, as the kubelet sends it: serve is done before it would SIGKILL
        assert cp.process is not None
        os.kill(cp.pid, signal.SIGTERM)
        assert cp.process.wait(timeout=shutdown_seconds()) == 0
        # and Envoy keeps routing on what it has
        assert envoy.get(host="echo.local") == (200, "k8s\n")
    finally:
        envoy.stop()
        cp.stop()
