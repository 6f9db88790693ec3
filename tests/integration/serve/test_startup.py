"""Start-up: the whole serve config is checked before anything is opened, and a failure on the
way closes everything already opened (the registry, the xDS server, the admin server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from control_plane import app
from control_plane.app import ConfigError, ServeConfig
from control_plane.registry import open_registry
from control_plane.registry.model import Registry
from harness.processes import ROUTEPLANE, Process
from harness.waiting import free_port, wait_until


def config(tmp_path: Path, **overrides: object) -> ServeConfig:
    values: dict[str, object] = {
        "registry_url": f"sqlite://{tmp_path / 'registry.db'}",
        "xds_listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
    }
    values.update(overrides)
    return ServeConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"xds_listen": "127.0.0.1:99999"}, "--xds-listen", id="port-out-of-range"),
        pytest.param({"xds_listen": "127.0.0.1"}, "--xds-listen", id="no-port"),
        pytest.param({"admin_listen": ":18001"}, "--admin-listen", id="no-host"),
        pytest.param({"poll_interval": 0.0}, "--poll-interval", id="poll-zero"),
        pytest.param({"new_streams_per_second": -1.0}, "--new-streams-per-second", id="rate"),
        pytest.param({"max_concurrent_pushes": 0}, "--max-concurrent-pushes", id="pushes"),
        pytest.param({"tls_cert": "/nonexistent/cert.pem"}, "--tls-cert", id="tls-partial"),
        pytest.param(
            {"admin_listen": "0.0.0.0:18001", "admin_token": " "},
            "--admin-listen",
            id="blank-token-off-loopback",
        ),
    ],
)
def test_a_bad_setting_is_refused_by_name(
    tmp_path: Path, overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        config(tmp_path, **overrides).validate()


async def test_a_refused_config_opens_nothing(tmp_path: Path) -> None:
    bad = config(tmp_path, admin_listen="0.0.0.0:18001")  # not loopback, no token
    with pytest.raises(ConfigError, match="--admin-listen"):
        await app.serve(bad)
    assert not (tmp_path / "registry.db").exists()  # the registry was never opened


async def test_a_failure_after_opening_closes_what_was_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Registry] = []
    closed: list[Registry] = []

    def spy_open(url: str) -> Registry:
        registry = open_registry(url)
        real_close = registry.close

        def close() -> None:
            closed.append(registry)
            real_close()

        registry.close = close  # type: ignore[method-assign]
        opened.append(registry)
        return registry

    monkeypatch.setattr(app, "open_registry", spy_open)
    cfg = config(tmp_path)
    with socket.socket() as taken:  # the admin port is busy: start-up fails after xDS is up
        taken.bind(("127.0.0.1", int(cfg.admin_listen.rsplit(":", 1)[1])))
        taken.listen()
        with pytest.raises(OSError):  # noqa: PT011 - the OS's own message, not ours
            await app.serve(cfg)
    assert len(opened) == 1
    assert closed == opened
    # The xDS server was stopped: its port is free again.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(cfg.xds_listen.rsplit(":", 1)[1])))


@pytest.mark.parametrize(
    ("xds_listen", "tls", "exposed"),
    [
        pytest.param("0.0.0.0:18000", False, True, id="all-interfaces"),
        pytest.param("10.1.2.3:18000", False, True, id="private-address"),
        pytest.param("127.0.0.1:18000", False, False, id="loopback"),
        pytest.param("127.0.0.2:18000", False, False, id="loopback-range"),
        pytest.param("[::1]:18000", False, False, id="loopback-v6"),
        pytest.param("localhost:18000", False, False, id="localhost"),
        pytest.param("0.0.0.0:18000", True, False, id="tls"),
    ],
)
def test_plaintext_xds_off_loopback_is_flagged(
    tmp_path: Path, xds_listen: str, tls: bool, exposed: bool
) -> None:
    tls_files = {"tls_cert": "c", "tls_key": "k", "client_ca": "a"} if tls else {}
    cfg = config(tmp_path, xds_listen=xds_listen, **tls_files)
    assert app.plaintext_exposed(cfg) is exposed


def _own_network_namespace() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode == 0
    )


@pytest.mark.parametrize(
    ("host", "warned"),
    [pytest.param("0.0.0.0", True, id="all-interfaces"), pytest.param("127.0.0.1", False, id="lo")],
)
def test_serve_logs_the_plaintext_warning_only_off_loopback(
    tmp_path: Path, host: str, warned: bool
) -> None:
    """The predicate above, as an operator sees it: serve's own log. Run in a network namespace
    of its own (``unshare -rn``) that has nothing but loopback, so an all-interfaces address is
    reachable from nowhere."""
    if not _own_network_namespace():
        reason = "unprivileged network namespaces (unshare -rn) are not allowed here"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs serve in its own network namespace: {reason}")
        pytest.skip(reason)
    xds = f"{host}:{free_port()}"
    serve = Process(
        argv=[
            "unshare",
            "-rn",  # execs serve: the PID is serve's
            ROUTEPLANE,
            "serve",
            "--registry",
            f"sqlite://{tmp_path / 'registry.db'}",
            "--xds-listen",
            xds,
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--log-json",
        ],
        log_path=tmp_path / "serve.log",
    )
    serve.start()
    try:

        def started() -> bool:
            """Every process of the serve is up: a lone process, or each of a group's workers
            (each of which could log the warning too)."""
            events = [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]
            up = sum(e["event"] == "control_plane_started" for e in events)
            group = [e["workers"] for e in events if e["event"] == "workers_started"]
            return up >= (group[0] if group else 1)

        wait_until(lambda: started() or not serve.alive(), timeout=30, what="serve to start")
        assert serve.alive(), serve.log()
        events = [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]
        warnings = [e for e in events if e["event"] == "xds_plaintext_exposed"]
        if warned:
            [warning] = warnings
            assert warning["level"] == "warning"
            assert warning["address"] == xds
            assert "plaintext" in warning["advice"]
        else:
            assert warnings == []
    finally:
        serve.stop()
