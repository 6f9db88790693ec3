"""The status page's screenshot for the README (``docs/status-page.png``), on a small known
state: the local mesh's servers (echo, gpu, ws, tokens), replicas in two regions, one Envoy in
us-west, a few requests held in flight through it. Everything runs on loopback and is stopped
by PID before it returns.

    .venv/bin/python -m tests.screenshot [--out docs/status-page.png]

Needs chromium (``tests/integration/admin/chromium.py``) and Envoy, as the browser tests do.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import wait_until
from tests.integration.admin.chromium import Browser, chromium_binary

SERVERS = (
    (
        "echo",
        "http",
        {"autoscaling": {"target_concurrency": 1, "min_replicas": 0, "max_replicas": 7}},
    ),
    (
        "gpu",
        "http",
        {
            "cold_start": {"mode": "hold", "timeout": "30s"},
            "autoscaling": {"target_concurrency": 1, "min_replicas": 0, "max_replicas": 2},
        },
    ),
    ("ws", "http", {"timeouts": {"idle": "1h"}}),
    ("tokens", "grpc", {"load_balancing": {"consistent_hash": {"header": "x-session-id"}}}),
)
REPLICAS = (("echo", "us-west"), ("echo", "us-west"), ("echo", "us-east"), ("ws", "us-east"))
HELD = 3


def take(out: Path, workdir: Path) -> int:
    """Start the state, open the page, save the PNG at ``out``; its size in bytes."""
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    cp = ControlPlane.create(workdir, extra=["--load-report-interval", "0.5"])
    echoes: list[EchoThread] = []
    registry = open_registry(cp.registry)
    envoy = Envoy.create(workdir, node_id="edge-us-west-0", region="us-west", xds=[cp.xds])
    browser: Browser | None = None
    held: list[threading.Thread] = []
    try:
        for name, protocol, spec in SERVERS:
            registry.put_server(
                name=name, hostnames=[f"{name}.local"], protocol=protocol, spec=spec
            )
        for index, (server, region) in enumerate(REPLICAS):
            echo = EchoThread(name=f"{server}-{region}-{index}")
            echoes.append(echo)
            registry.register_replica(server=server, address=echo.address, region=region)
        cp.start()
        cp.wait_ready()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, timeout=15, what="routing")
        held = [
            threading.Thread(
                target=envoy.get,
                kwargs={"path": "/slow?ms=15000", "host": "echo.local", "timeout": 30},
            )
            for _ in range(HELD)
        ]
        for thread in held:
            thread.start()
        browser = Browser.launch(binary, workdir / "profile", width=1200, height=800)
        browser.open(f"http://{cp.admin}/")
        shown = "#load tr[data-server=echo][data-region='*'] td:nth-child(4)"
        wait_until(
            lambda: (
                browser is not None
                and browser.evaluate(f'document.querySelector("{shown}")?.textContent') == str(HELD)
                and browser.evaluate("document.getElementById('convergence').dataset.synced") == "1"
            ),
            timeout=20,
            what="the held requests and the synced proxy on the page",
        )
        # The clock in the status line is the only thing that differs between two runs.
        browser.evaluate("document.getElementById('status').textContent = 'live'")
        return browser.screenshot(out)
    finally:
        if browser is not None:
            browser.close()
        envoy.stop()
        cp.stop()
        registry.close()
        for echo in echoes:
            echo.stop()
        for thread in held:
            thread.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/status-page.png"))
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="routeplane-screenshot-") as workdir:
        size = take(args.out, Path(workdir))
    print(f"{args.out}: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
