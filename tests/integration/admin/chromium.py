"""Headless chromium driven over the Chrome DevTools Protocol, for the status page's browser tests
and its screenshot: one browser process on a loopback debugging port, a fresh profile, one tab.

CDP directly over ``websockets`` (already a dependency) rather than selenium: no new package,
no chromedriver process beside the browser, and the tab's events (exceptions, console and CSP
messages, dialogs) come to the test as they happen. Imports only the standard library,
``websockets`` and ``harness``; nothing of ``control_plane``.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from harness.processes import http_get
from harness.waiting import free_port, wait_until

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The browser's path; a skip without one, and under ``CI=true`` a failure saying why."""
    binary = chromium_binary()
    if binary is None:
        message = "no chromium on PATH (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI runs the status page's browser tests", pytrace=False)
        pytest.skip(message)
    return binary


@dataclass(kw_only=True, slots=True)
class Browser:
    """One headless chromium and one tab (a CDP session on it). ``events`` keeps the tab's
    exceptions, console and log entries and dialogs, in order, for a test to inspect."""

    process: subprocess.Popen[bytes]
    socket: ClientConnection
    session: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def launch(cls, binary: str, profile: Path, *, width: int = 1200, height: int = 800) -> Browser:
        port = free_port()
        profile.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--headless",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # a container's small /dev/shm crashes tabs
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            *(["--no-sandbox"] if os.geteuid() == 0 else []),  # its sandbox refuses root
            "about:blank",
        ]
        log = (profile.parent / "chromium.log").open("wb")
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:

            def endpoint() -> str | None:
                if process.poll() is not None:
                    raise AssertionError(f"chromium exited with {process.returncode}")
                status, body = http_get(f"http://127.0.0.1:{port}/json/version", timeout=2)
                return str(json.loads(body)["webSocketDebuggerUrl"]) if status == 200 else None

            url = wait_until(endpoint, timeout=20, interval=0.05, what="chromium's DevTools port")
            browser = cls(process=process, socket=connect(url, max_size=64 * 2**20, legacy=True))
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            browser.session = browser.call("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log"):
                browser.call(f"{domain}.enable")
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            return browser
        except BaseException:
            stop(process)
            raise

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command (on the tab, once attached); its result, or an AssertionError."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.socket.send(json.dumps(message))
        while True:
            answer = json.loads(self.socket.recv(timeout=30))
            if answer.get("id") == ident:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result
            if answer.get("method") == "Page.javascriptDialogOpening":
                # Answered at once (an open alert would stall the tab), and kept as evidence.
                self.socket.send(
                    json.dumps(
                        {
                            "id": next(self._ids),
                            "method": "Page.handleJavaScriptDialog",
                            "params": {"accept": True},
                            "sessionId": self.session,
                        }
                    )
                )
            if answer.get("method") in (
                "Runtime.exceptionThrown",
                "Runtime.consoleAPICalled",
                "Log.entryAdded",
                "Page.javascriptDialogOpening",
            ):
                self.events.append(answer)

    def open(self, url: str) -> int:
        """Navigate the tab to ``url`` and wait for its document; the HTTP status it ended on
        (after redirects)."""
        self.evaluate("window.previousDocument = true")
        self.call("Page.navigate", url=url)
        wait_until(
            lambda: self.evaluate("!window.previousDocument && document.readyState === 'complete'"),
            timeout=15,
            what=f"{url} loaded",
        )
        return int(self.evaluate("performance.getEntriesByType('navigation')[0].responseStatus"))

    def evaluate(self, expression: str) -> Any:
        """``expression``'s value in the tab (JSON-able values only)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """What the tab reported as wrong: uncaught exceptions, console errors, CSP and other
        log errors, and any dialog (alert, confirm) a script opened."""
        found = []
        for event in self.events:
            params = event["params"]
            match event["method"]:
                case "Runtime.exceptionThrown":
                    found.append(f"exception: {params['exceptionDetails']}")
                case "Runtime.consoleAPICalled" if params["type"] in ("error", "assert"):
                    found.append(f"console.{params['type']}: {params['args']}")
                case "Log.entryAdded" if params["entry"]["level"] == "error":
                    found.append(
                        f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}"
                    )
                case "Page.javascriptDialogOpening":
                    found.append(f"dialog: {params.get('message')}")
        return found

    def screenshot(self, path: Path) -> int:
        """A PNG of the tab's viewport at ``path``; its size in bytes."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return len(data)

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            stop(self.process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """End the browser by its PID (it ends its own helper processes with it)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
