"""Pick the registry implementation for a URL."""

from __future__ import annotations

from control_plane.registry.errors import RegistryError
from control_plane.registry.model import Registry


def open_registry(url: str) -> Registry:
    if url.startswith("sqlite://"):
        from control_plane.registry.sqlite import SqliteRegistry

        return SqliteRegistry(url)
    if url.startswith("spanner://"):
        try:
            from control_plane.registry.spanner import SpannerRegistry
        except ImportError as exc:
            raise RegistryError(f"registry {url!r}: the Spanner client cannot load: {exc}") from exc
        return SpannerRegistry(url)
    raise RegistryError(
        f"registry {url!r}: unknown scheme; expected sqlite:///PATH or spanner://projects/..."
    )
