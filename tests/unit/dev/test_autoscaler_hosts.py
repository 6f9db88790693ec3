"""The sample autoscaler in a container: its replicas listen on ``--host`` and register
``--advertise-host`` (a real replica process on a real SQLite registry), and a wildcard
``--host`` without an address to register is refused before anything starts."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from control_plane.cli import main
from control_plane.dev.autoscaler import Autoscaler
from control_plane.registry import open_registry
from harness.processes import http_get
from harness.waiting import free_port, wait_until


def test_its_replicas_listen_on_host_and_register_the_advertised_address(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    registry = open_registry(url)
    registry.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    port = free_port()
    auto = Autoscaler(
        server="echo",
        region="us-west",
        ports=[port],
        registry=url,
        admin="",
        host="127.0.0.1",
        advertise_host="127.0.0.2",
    )
    try:
        assert auto._start() == port
        wait_until(lambda: registry.list_replicas("echo") != [], timeout=20, what="registered")
        [row] = registry.list_replicas("echo")
        assert (row.host, row.port) == ("127.0.0.2", port)
        assert http_get(f"http://127.0.0.1:{port}/") == (200, f"echo-auto-{port}\n")
    finally:
        auto.stop_all()
        registry.close()


def test_a_wildcard_host_without_an_advertised_address_is_refused(tmp_path: Path) -> None:
    argv = ["samples", "autoscaler", "--server", "echo", "--region", "us-west", "--ports", "8150"]
    argv += ["--host", "0.0.0.0", "--registry", f"sqlite://{tmp_path / 'rp.db'}"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert "--host 0.0.0.0" in result.output
    assert "--advertise-host" in result.output
    assert not (tmp_path / "rp.db").exists()  # refused before it opened anything
