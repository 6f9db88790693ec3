"""The status page in a real browser (Debian's chromium, headless, over CDP: ``chromium.py``),
on a real ``serve``, real Envoys and real replicas: what the page shows is what ``routeplane
load --json`` and ``proxies --json`` print, it follows the registry and the load without a
reload, a hostile registry row stays text and runs nothing, and the admin token gates it.
Every DOM read waits on a condition with a deadline; one browser serves the whole module."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import wait_until
from tests.integration.admin.chromium import Browser, require_chromium
from tests.integration.admin.test_status_page import (
    HOSTILE,
    cli_json,
    hostile_cp,  # noqa: F401 (a fixture, used by name)
    started,
)

ROWS = (
    "[...document.querySelectorAll('#{table} tbody tr')]"
    ".map(tr => [...tr.cells].map(td => td.textContent))"
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = require_chromium()
    chromium = Browser.launch(binary, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Browser]:
    """The module's browser, its tab's reports cleared; the test fails on any it makes."""
    browser.events.clear()
    yield browser
    browser.open("about:blank")
    found = browser.problems()  # the page names its icon, and /favicon.ico answers too
    assert found == [], found


def shown(value: Any) -> str:
    """``value`` as the page writes it (``String(value)``, a dash for null)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


LOAD_FIELDS = (
    "server",
    "region",
    "ready_replicas",
    "in_flight",
    "requests_per_second",
    "errors_per_second",
    "desired_replicas",
    "cold_starts",
    "utilization",
)


def load_rows_of(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[shown(row[key]) for key in LOAD_FIELDS] for row in rows]


def proxy_rows_of(nodes: list[dict[str, Any]]) -> list[list[str]]:
    """``proxies --json`` as the page's proxy table: node, group, address, client, streams,
    each type's state and NACKs, last NACKs."""
    rows = []
    for node in nodes:
        streams = node["streams"]
        rows.append(
            [
                node["node_id"],
                node["group"],
                node["address"],
                node["client"] + (f" (worker {node['worker']})" if node.get("worker") else ""),
                ", ".join(
                    f"{s['service']} {s['protocol']}" + (" on-demand" if s["on_demand"] else "")
                    for s in streams
                ),
                "".join(
                    f"{name} {status['state']} ({status['nacks']}) "
                    for s in streams
                    for name, status in s["types"].items()
                ),
                "; ".join(
                    f"{name}: {status['last_error']}"
                    for s in streams
                    for name, status in s["types"].items()
                    if status["last_error"]
                ),
            ]
        )
    return rows


def table(tab: Browser, name: str) -> list[list[str]]:
    rows: list[list[str]] = tab.evaluate(ROWS.format(table=name))
    return rows


def agree(page: Callable[[], Any], cli: Callable[[], Any], *, what: str) -> None:
    """Wait until the page shows what the CLI prints (a report between the two reads moves a
    counter); at the deadline, fail showing both."""
    last: dict[str, Any] = {}

    def same() -> bool:
        last["page"], last["cli"] = page(), cli()
        return bool(last["page"] == last["cli"])

    try:
        wait_until(same, timeout=15, what=what)
    except AssertionError:
        assert last["page"] == last["cli"], what
        raise


def live(tab: Browser) -> bool:
    return bool(tab.evaluate("document.querySelector('#status[data-state=live]') !== null"))


def hold(envoy: Envoy, count: int, ms: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=envoy.get, kwargs={"path": f"/slow?ms={ms}", "host": "echo.local", "timeout": 30}
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.envoy
def test_the_page_shows_what_the_cli_prints_and_follows_replicas_and_load(
    tab: Browser, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    cp = ControlPlane.create(tmp_path, extra=["--load-report-interval", "0.5"])
    registry = open_registry(cp.registry)
    registry.put_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={"autoscaling": {"target_concurrency": 2, "max_replicas": 10}},
    )
    registry.register_replica(server="echo", address=echo_factory("a").address, region="us-west")
    envoy = Envoy.create(tmp_path, node_id="edge-0", region="us-west", xds=[cp.xds])
    threads: list[threading.Thread] = []
    try:
        admin = started(cp).admin
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, timeout=15, what="routing")
        assert tab.open(f"http://{admin}/") == 200
        wait_until(lambda: live(tab), timeout=10, what="the page live")
        tab.evaluate("window.sameDocument = true")  # gone if the page reloads
        [server] = wait_until(lambda: table(tab, "servers"), timeout=10, what="a server row")
        assert server == [
            "echo",
            "echo.local",
            "http",
            "any",
            "reject",
            "0–10 at 2",
            "us-west 1/0",
        ]
        # The load and proxy tables are the CLI's rows, as the page formats them (waited for:
        # a report between the two reads moves a counter).
        agree(
            lambda: table(tab, "load"),
            lambda: load_rows_of(cli_json("load", admin=admin)),
            what="the page's load table and routeplane load --json",
        )
        agree(
            lambda: table(tab, "proxies"),
            lambda: proxy_rows_of(cli_json("proxies", admin=admin)),
            what="the page's proxy table and routeplane proxies --json",
        )
        assert tab.evaluate("document.querySelector('#proxies tr[data-node]').dataset.node") == (
            "edge-0"
        )
        states = tab.evaluate(
            "[...document.querySelectorAll('#proxies [data-type]')]"
            ".map(s => s.dataset.type + '=' + s.dataset.state)"
        )
        assert states, "no type on the page"
        assert all(s.endswith("=SYNCED") for s in states), states
        convergence = tab.evaluate("({...document.getElementById('convergence').dataset})")
        assert convergence == {"synced": "1", "nodes": "1"}
        # A replica registers in another region: the page shows it, without a reload.
        registry.register_replica(
            server="echo", address=echo_factory("b").address, region="us-east"
        )
        wait_until(
            lambda: table(tab, "servers")[0][-1] == "us-east 1/0, us-west 1/0",
            timeout=10,
            what="the new replica on the page",
        )
        # Requests held in flight through Envoy show in the load table.
        threads = hold(envoy, 3, 8000)
        total = "#load tr[data-server=echo][data-region='*'] td:nth-child(4)"
        wait_until(
            lambda: tab.evaluate(f'document.querySelector("{total}")?.textContent') == "3",
            timeout=10,
            what="3 requests in flight on the page",
        )
        assert tab.evaluate("window.sameDocument") is True
    finally:
        tab.open("about:blank")  # before the server stops: no failed poll
        registry.close()
        envoy.stop()
        cp.stop()
        for thread in threads:
            thread.join(timeout=10)


def test_a_hostile_name_is_text_and_runs_nothing(
    hostile_cp: ControlPlane,  # noqa: F811 (the fixture imported above)
    tab: Browser,  # after the control plane: it leaves the page before the server stops
) -> None:
    admin = hostile_cp.admin
    assert tab.open(f"http://{admin}/") == 200
    wait_until(lambda: live(tab), timeout=10, what="the page live")
    cells = wait_until(
        lambda: tab.evaluate(
            "[...document.querySelectorAll('td')].map(td => td.textContent)"
            f".filter(text => text.includes({HOSTILE!r}))"
        ),
        timeout=10,
        what="the hostile hostname on the page",
    )
    assert HOSTILE in cells  # the problem's value, as literal text
    assert tab.evaluate("document.images.length") == 0
    assert tab.evaluate("document.querySelectorAll('img').length") == 0
    assert tab.evaluate("document.title") == "routeplane"
    # Its onerror would call alert(): a dialog the tab would report (the fixture fails on it).
    assert not [e for e in tab.events if e["method"] == "Page.javascriptDialogOpening"]
    # Under --workers the supervisor's page shows the group's servers.
    names = tab.evaluate(
        "[...document.querySelectorAll('#servers tr[data-server]')].map(tr => tr.dataset.server)"
    )
    assert names == ["echo"]  # "bad" is not served: its row is a problem


def test_the_page_needs_the_token_in_the_browser(tab: Browser, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    cp = ControlPlane.create(tmp_path, extra=["--admin-token-file", str(token_file)])
    try:
        admin = started(cp).admin
        assert tab.open(f"http://{admin}/") == 401
        assert tab.evaluate("document.getElementById('status')") is None
        assert tab.open(f"http://{admin}/?token=wrong") == 401
        # The token once: the cookie carries it from then on, and the address bar drops it.
        assert tab.open(f"http://{admin}/?token=s3cret") == 200
        assert tab.evaluate("location.pathname + location.search") == "/"
        wait_until(lambda: live(tab), timeout=10, what="the page live with the cookie")
        assert tab.evaluate("document.cookie") == ""  # HttpOnly: the script never sees it
    finally:
        tab.open("about:blank")
        cp.stop()
    # A 401 document logs its status as a console error: expected here, not a page problem.
    tab.events[:] = [e for e in tab.events if "401" not in str(e)]
