"""What every manifest of ``deploy/`` shares: the labels and metadata of an object, and YAML
written for people (multi-line strings as literal blocks, no anchors). Pure."""

from __future__ import annotations

from typing import Any

import yaml

from control_plane.deploy.topology import KubeConfig


def labels(component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "routeplane",
        "app.kubernetes.io/component": component,
    }


def meta(name: str, kube: KubeConfig, component: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": kube.namespace, "labels": labels(component), **extra}


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings (the bootstrap, the scrape config) as readable literal blocks."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


def dump_all(documents: list[dict[str, Any]]) -> str:
    return "---\n".join(dump(d) for d in documents)
