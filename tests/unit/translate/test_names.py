"""``names.cluster`` and ``names.parse_cluster`` are each other's inverse: a cluster name a proxy
asks for is read back to the workspace, server and cold epoch it was made from, and a name
``cluster`` cannot have made reads as nothing."""

from __future__ import annotations

import pytest

from control_plane.translate import names
from control_plane.translate.names import ClusterName


@pytest.mark.parametrize(
    ("workspace", "server", "epoch"),
    [
        pytest.param("default", "echo", 0, id="plain"),
        pytest.param("default", "echo", 7, id="cold"),
        pytest.param("acme", "gpu-cold1", 3, id="a-server-named-like-a-cold-name"),
        pytest.param("acme-cold2", "api", 12, id="a-workspace-named-like-a-cold-name"),
        pytest.param("w", "cold", 1, id="a-server-named-cold"),
        pytest.param("a" * 63, "b" * 63, 10**18, id="longest-parts"),
    ],
)
def test_a_made_name_reads_back_to_what_it_was_made_from(
    workspace: str, server: str, epoch: int
) -> None:
    name = names.cluster(workspace=workspace, server=server, epoch=epoch)
    assert names.parse_cluster(name) == ClusterName(workspace=workspace, server=server, epoch=epoch)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("default_gpu-cold1", ("default", "gpu-cold1", 0), id="dash-cold-is-a-name"),
        pytest.param("default_gpu_cold1", ("default", "gpu", 1), id="underscore-cold-is-an-epoch"),
    ],
)
def test_names_that_merely_look_alike_read_as_what_they_are(
    name: str, expected: tuple[str, str, int]
) -> None:
    workspace, server, epoch = expected
    assert names.parse_cluster(name) == ClusterName(workspace=workspace, server=server, epoch=epoch)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("echo", id="no-workspace"),
        pytest.param("_echo", id="empty-workspace"),
        pytest.param("default_", id="empty-server"),
        pytest.param("default_echo_cold", id="cold-without-epoch"),
        pytest.param("default_echo_cold0", id="epoch-zero"),
        pytest.param("default_echo_cold07", id="leading-zero"),
        pytest.param("default_echo_cold-1", id="negative-epoch"),
        pytest.param("default_echo_cold\u00b2", id="unicode-digit"),
        pytest.param("default_echo_cold1_cold2", id="two-epochs"),
        pytest.param("default_echo_warm1", id="another-suffix"),
        pytest.param("Default_Echo", id="upper-case"),
        pytest.param("default_-echo", id="leading-dash"),
        pytest.param("default_echo\n", id="trailing-newline"),
        pytest.param("default_" + "e" * 64, id="server-too-long"),
        pytest.param("default_echo_cold" + "9" * 20, id="epoch-too-long"),
        pytest.param("outbound|80||echo.default.svc", id="a-foreign-cluster"),
    ],
)
def test_a_name_cluster_cannot_have_made_reads_as_nothing(name: str) -> None:
    assert names.parse_cluster(name) is None


@pytest.mark.parametrize(
    ("server", "revision", "epoch"),
    [
        pytest.param("chat", "v2", 0, id="revision"),
        pytest.param("chat", "v2", 4, id="revision-cold"),
        pytest.param("chat-rev", "cold1", 0, id="a-revision-named-like-a-cold-name"),
        pytest.param("rev", "rev", 2, id="a-server-and-revision-named-rev"),
        pytest.param("b" * 63, "c" * 63, 10**18, id="longest-parts"),
    ],
)
def test_a_revision_cluster_name_reads_back(server: str, revision: str, epoch: int) -> None:
    name = names.cluster(workspace="default", server=server, epoch=epoch, revision=revision)
    assert name.startswith(f"default_{server}_rev_{revision}")
    assert names.parse_cluster(name) == ClusterName(
        workspace="default", server=server, epoch=epoch, revision=revision
    )


@pytest.mark.parametrize(
    "name",
    [
        "default_chat_rev_",
        "default_chat_rev_V2",
        "default_chat_rev_v2_rev_v3",
        "default_chat_cold1_rev_v2",
    ],
)
def test_a_revision_cluster_name_cluster_cannot_make_reads_as_nothing(name: str) -> None:
    assert names.parse_cluster(name) is None
