"""The embedded SQLite registry: the default store, needing nothing installed."""

from control_plane.registry.sqlite.store import SqliteRegistry, path_of

__all__ = ["SqliteRegistry", "path_of"]
