"""Revisions on the user's surface (issue 26, item 1): ``replicas register --revision``,
``replicas list`` (REVISION, REGISTERED; ``revision`` and ``registered_at`` in ``--json``),
``servers show`` and ``servers apply`` of a split, the sample replica's ``--revision``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from control_plane.cli import main
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, http_get
from harness.waiting import free_port, wait_until


@pytest.fixture
def registry(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    assert run("servers", "create", "echo", "--host", "echo.local", "--registry", url)[0] == 0
    return url


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def register(registry: str, port: int, *more: str) -> str:
    code, output = run(
        "replicas",
        "register",
        "echo",
        "--address",
        f"127.0.0.1:{port}",
        "--region",
        "us-west",
        *more,
        "--registry",
        registry,
    )
    assert code == 0, output
    assert output.count("\n") == 1
    return output.strip()


def test_register_with_a_revision_and_list_it(registry: str) -> None:
    before = time.time()
    old = register(registry, 8081)
    new = register(registry, 8082, "--revision", "v2")
    code, output = run("replicas", "list", "--json", "--registry", registry)
    assert code == 0, output
    by_id = {r["id"]: r for r in json.loads(output)}
    assert (by_id[old]["revision"], by_id[new]["revision"]) == ("", "v2")
    assert before <= by_id[old]["registered_at"] <= by_id[new]["registered_at"] <= time.time()
    assert list(by_id[new])[-2:] == ["revision", "registered_at"]  # appended: old keys stay
    code, output = run("replicas", "list", "--registry", registry)
    assert code == 0, output
    header, *rows = output.splitlines()
    assert header.split()[-3:] == ["STATE", "REVISION", "REGISTERED"]
    line = {row.split()[0]: row.split()[5:] for row in rows}
    assert line[new][:2] == ["READY", "v2"]
    assert line[new][-1] == "ago"
    assert line[old][:2] == ["READY", "-"]


def test_a_row_written_before_the_revision_columns_lists_as_none(
    registry: str, tmp_path: Path
) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "rp.db") as db:  # as the code before issue 26 wrote it
        db.execute(
            "INSERT INTO replicas (id, server, host, port, region, zone, weight, state,"
            " lease_expires_at, updated_at) VALUES ('r-old', 'echo', '127.0.0.1', 8081,"
            " 'us-west', '', 100, 'READY', NULL, ?)",
            (time.time(),),
        )
    code, output = run("replicas", "list", "--json", "--registry", registry)
    assert code == 0, output
    [row] = json.loads(output)
    assert (row["id"], row["revision"], row["registered_at"]) == ("r-old", "", None)
    code, output = run("replicas", "list", "--registry", registry)
    assert output.splitlines()[1].split()[-2:] == ["-", "-"]


@pytest.mark.parametrize(
    ("revision", "message"),
    [
        pytest.param(
            "V2",
            "error: invalid revision 'V2': use 1-63 lowercase letters, digits and '-', not"
            " starting with '-'",
            id="upper-case",
        ),
        pytest.param(
            "latest",
            "error: invalid revision 'latest': 'latest' is reserved for the traffic split",
            id="latest",
        ),
        pytest.param("v2\n", "error: invalid revision 'v2\\n'", id="trailing-newline"),
        pytest.param("x" * 64, "error: invalid revision 'xxxx", id="64-chars"),
    ],
)
def test_a_bad_revision_is_one_line_and_nothing_is_registered(
    registry: str, revision: str, message: str
) -> None:
    code, output = run(
        "replicas",
        "register",
        "echo",
        "--address",
        "127.0.0.1:8081",
        "--region",
        "us-west",
        "--revision",
        revision,
        "--registry",
        registry,
    )
    assert code == 1
    assert output.startswith(message)
    assert len(output.strip().splitlines()) == 1
    assert run("replicas", "list", "--json", "--registry", registry)[1].strip() == "[]"


def test_servers_show_lists_revisions_newest_first_and_marks_latest(registry: str) -> None:
    register(registry, 8081, "--revision", "v1")
    register(registry, 8082, "--revision", "v1", "--state", "STARTING")
    v2 = register(registry, 8083, "--revision", "v2")
    register(registry, 8084, "--revision", "v3", "--state", "STARTING")
    code, output = run("servers", "show", "echo", "--registry", registry)
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "server echo (workspace default, http, echo.local)"
    assert lines[1:3] == ["traffic (the default):", "  latest       100%  = v2"]
    start = lines.index("revisions (newest first, by their first replica's registration):")
    table = [line.split() for line in lines[start + 1 :]]
    assert table[0] == ["REVISION", "READY", "REGISTERED"]
    assert [(row[0], row[1], row[-1]) for row in table[1:]] == [
        ("v3", "0/1", "ago"),
        ("v2", "1/1", "latest"),
        ("v1", "1/2", "ago"),
    ]
    # The newest revision with a READY replica is latest: drain v2's and v1 is.
    assert run("replicas", "drain", v2, "--registry", registry)[0] == 0
    code, output = run("servers", "show", "echo", "--json", "--registry", registry)
    assert code == 0, output
    shown = json.loads(output)
    assert shown["latest"] == "v1"
    assert shown["traffic"] == [{"revision": "latest", "percent": 100, "tag": ""}]
    assert [
        (r["revision"], r["ready_replicas"], r["replicas"], r["latest"]) for r in shown["revisions"]
    ] == [("v3", 0, 1, False), ("v2", 0, 1, False), ("v1", 1, 2, True)]
    assert all(r["registered_at"] > 0 for r in shown["revisions"])
    assert shown["invalid_revision_replicas"] == []


def test_servers_apply_of_a_split_and_servers_show_of_it(registry: str, tmp_path: Path) -> None:
    register(registry, 8081, "--revision", "v1")
    path = tmp_path / "servers.yaml"
    path.write_text(
        "servers:\n- name: echo\n  hostnames: [echo.local]\n  traffic:\n"
        "  - {revision: v1, percent: 90}\n  - {revision: v2, percent: 10, tag: canary}\n"
        "  - {revision: latest, percent: 0, tag: next}\n"
    )
    code, output = run("servers", "apply", "-f", str(path), "--registry", registry)
    assert code == 1
    assert output == (
        f"error: {path}: server 'echo': invalid spec.traffic[1].revision 'v2': no replica of"
        " server 'echo' carries it (revisions: v1); register one first, or name latest;"
        " nothing was written\n"
    )
    register(registry, 8082, "--revision", "v2", "--state", "STARTING")
    code, output = run("servers", "apply", "-f", str(path), "--registry", registry)
    assert (code, output) == (0, "echo: updated\n")
    code, output = run("servers", "show", "echo", "--registry", registry)
    assert code == 0, output
    assert output.splitlines()[1:5] == [
        "traffic:",
        "  v1            90%",
        "  v2            10%  tag canary",
        "  latest         0%  tag next  = v1",
    ]
    code, output = run("servers", "show", "echo", "--json", "--registry", registry)
    assert json.loads(output)["traffic"] == [
        {"revision": "v1", "percent": 90, "tag": ""},
        {"revision": "v2", "percent": 10, "tag": "canary"},
        {"revision": "latest", "percent": 0, "tag": "next"},
    ]


def test_servers_show_of_an_unknown_server_is_one_line(registry: str) -> None:
    assert run("servers", "show", "nope", "--registry", registry) == (
        1,
        "error: unknown server 'nope'\n",
    )


def test_servers_show_names_a_split_revision_with_no_replica(registry: str) -> None:
    """The split was applied while v2 had a replica; it has gone since."""
    register(registry, 8081, "--revision", "v1")
    v2 = register(registry, 8082, "--revision", "v2")
    spec = {"traffic": [{"revision": "v1", "percent": 50}, {"revision": "v2", "percent": 50}]}
    reg = open_registry(registry)
    reg.put_server(name="echo", hostnames=["echo.local"], protocol="http", spec=spec)
    reg.deregister_replica(v2)
    reg.close()
    code, output = run("servers", "show", "echo", "--registry", registry)
    assert code == 0, output
    assert "  v2            50%  (no replica carries it)" in output.splitlines()


@pytest.mark.parametrize("revision", ["v2", ""])
def test_the_sample_replica_registers_its_revision_and_answers_with_it(
    registry: str, tmp_path: Path, revision: str
) -> None:
    port = free_port()
    log = (tmp_path / "replica.log").open("wb")
    extra = ["--revision", revision] if revision else []
    process = subprocess.Popen(
        [
            ROUTEPLANE,
            "samples",
            "replica",
            "--kind",
            "http",
            "--name",
            "a",
            "--listen",
            f"127.0.0.1:{port}",
            "--server",
            "echo",
            "--region",
            "us-west",
            "--registry",
            registry,
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    reg = open_registry(registry)
    try:
        [replica] = wait_until(lambda: reg.list_replicas("echo"), timeout=30, what="registered")
        assert replica.revision == revision
        expected = "a@v2\n" if revision else "a\n"
        assert wait_until(lambda: http_get(f"http://127.0.0.1:{port}/")[1] == expected)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
        reg.close()
    assert process.returncode == 0, (tmp_path / "replica.log").read_text()


def test_the_sample_replica_refuses_a_bad_revision_before_it_serves(
    registry: str, tmp_path: Path
) -> None:
    port = free_port()
    done = subprocess.run(
        [
            ROUTEPLANE,
            "samples",
            "replica",
            "--kind",
            "http",
            "--name",
            "a",
            "--listen",
            f"127.0.0.1:{port}",
            "--server",
            "echo",
            "--region",
            "us-west",
            "--registry",
            registry,
            "--revision",
            "Latest",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: invalid --revision 'Latest'")
    assert "Traceback" not in done.stderr
    reg = open_registry(registry)
    assert reg.list_replicas() == []
    reg.close()
