"""A servers file nested 1,000 levels deep, made huge by YAML aliases, or holding itself: a
ServersFileError naming the file, never a RecursionError (a traceback from ``servers apply``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.registry.errors import ServersFileError
from control_plane.registry.servers import MAX_FILE_DEPTH, load_servers_file

LAUGHS = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["servers:", "- name: lol", "  hostnames: [lol.example.com]", "  regions: *a8"]
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "servers:\n- name: a\n  hostnames: " + "[" * 1000 + "]" * 1000,
            "nested too deeply",
            id="deep-flow-list",
        ),
        pytest.param(
            "servers:\n- name: a\n  hostnames: [a.example.com]\n  retries: "
            + "[" * 200
            + "]" * 200,
            "nested too deeply",
            id="deep-but-parsed",
        ),
        pytest.param(
            "servers:\n- name: a\n  hostnames: [a.example.com]\n  retries: "
            + "{a: " * 1000
            + "1"
            + "}" * 1000,
            "nested too deeply",
            id="deep-flow-mapping",
        ),
        pytest.param(LAUGHS, "more than 1,000,000 values", id="billion-laughs"),
        pytest.param(
            "servers: &s\n- name: a\n  hostnames: [a.example.com]\n  regions: *s",
            "",
            id="holds-itself",
        ),
    ],
)
def test_a_hostile_servers_file_is_an_error_naming_it(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text(text)
    with pytest.raises(ServersFileError) as caught:
        load_servers_file(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert len(str(caught.value)) < 300


def test_a_file_within_the_depth_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    path.write_text(
        "servers:\n- name: a\n  hostnames: [a.example.com]\n"
        "  load_balancing: {consistent_hash: {header: x-user}}\n"
    )
    (document,) = load_servers_file(path)
    assert document.spec == {"load_balancing": {"consistent_hash": {"header": "x-user"}}}
    assert MAX_FILE_DEPTH >= 8
