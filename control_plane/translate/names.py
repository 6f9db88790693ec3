"""Every Envoy resource name routeplane emits, in one place.

Stats, dashboards and CSDS output depend on these names: they are pinned by golden tests.
Server and workspace names are ``[a-z0-9-]``, so ``_`` is an unambiguous separator and no name
contains the ``.`` that Envoy's stat tag extraction splits on. A name that comes back (a proxy
asks for a cluster by name) is read here too: ``parse_cluster`` is ``cluster``'s inverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

LISTENER: Final = "ingress_http"
ROUTE_CONFIG: Final = "ingress_http"
HTTP_STAT_PREFIX: Final = "ingress_http"
XDS_CLUSTER: Final = "routeplane_xds"


def cluster(*, workspace: str, server: str, epoch: int = 0, revision: str = "") -> str:
    """The Cluster (and its ClusterLoadAssignment) of one server: ``<workspace>_<server>``, or
    ``<workspace>_<server>_cold<epoch>`` for a hold-mode server that has been held: Envoy asks
    for an on-demand cluster name only once, so each cold period gets a name of its own. A
    revision other than ``""`` (issue 26: a server with a traffic split has a cluster per
    revision) adds ``_rev_<revision>`` after the server: ``default_chat_rev_v2``."""
    base = (
        f"{workspace}_{server}"
        if not revision
        else f"{workspace}_{server}{REVISION_MARK}{revision}"
    )
    if epoch:
        return f"{base}{COLD_MARK}{epoch}"
    return base


COLD_MARK: Final = "_cold"
REVISION_MARK: Final = "_rev_"
# A workspace, server or revision name as validation allows it (registry/validate.py); an epoch
# as ``cluster`` writes it (no leading zero, never 0, at most 19 digits). No part holds ``_``,
# so the marks cannot be mistaken for a part.
_PART = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_CLUSTER = re.compile(
    rf"({_PART})_({_PART})(?:{REVISION_MARK}({_PART}))?(?:{COLD_MARK}([1-9][0-9]{{0,18}}))?"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterName:
    """A server's cluster name, read back: ``epoch`` 0 for the plain name, ``revision`` ""
    for a server's one cluster."""

    workspace: str
    server: str
    epoch: int = 0
    revision: str = ""


def parse_cluster(name: str) -> ClusterName | None:
    """The workspace, server, revision and cold epoch ``cluster`` made ``name`` from; None for
    any name it cannot have made (proxies send these names: nothing here raises)."""
    match = _CLUSTER.fullmatch(name)
    if match is None:
        return None
    workspace, server, revision, epoch = match.groups()
    return ClusterName(
        workspace=workspace, server=server, epoch=int(epoch or 0), revision=revision or ""
    )


METADATA_NAMESPACE: Final = "routeplane"
COLD_START_CATEGORY: Final = "cold_start"
COLD_START_HEADER: Final = "x-routeplane-cold-start"


def virtual_host(*, hostname: str) -> str:
    """One virtual host per hostname (servers under different path prefixes share it)."""
    return hostname


def route(*, workspace: str, server: str, variant: str) -> str:
    """A server's route: ``<workspace>_<server>/<variant>`` (``default`` or ``websocket``)."""
    return f"{cluster(workspace=workspace, server=server)}/{variant}"


def tagged_route(*, workspace: str, server: str, variant: str, tag: str) -> str:
    """A tag's route (issue 26): the variant's name and ``@<tag>``, as in
    ``default_chat/default@canary``."""
    return f"{route(workspace=workspace, server=server, variant=variant)}@{tag}"


# A request header naming a tag sends the request to the tag's revision, bypassing the split.
REVISION_HEADER: Final = "x-routeplane-revision"
TAG_HOST_MARK: Final = "--"
MAX_LABEL = 63


def tagged_hostname(*, hostname: str, tag: str) -> str | None:
    """The hostname form of a tag: ``<tag>--<hostname>`` (``canary--chat.example.com``); None
    for a wildcard hostname, or when ``<tag>--<first label>`` would not fit a DNS label (63
    characters) or the name 253."""
    if hostname.startswith("*"):
        return None
    first = hostname.split(".", 1)[0]
    tagged = f"{tag}{TAG_HOST_MARK}{hostname}"
    if len(tag) + len(TAG_HOST_MARK) + len(first) > MAX_LABEL or len(tagged) > 253:
        return None
    return tagged


def api_listener(*, hostname: str) -> str:
    """A gRPC client's Listener: named exactly as the host of its target (``xds:///<hostname>``),
    since that is the name gRPC asks for. Only gRPC nodes get these (never an Envoy)."""
    return hostname


def api_route_config(*, hostname: str) -> str:
    """The route configuration inlined in that Listener."""
    return hostname
