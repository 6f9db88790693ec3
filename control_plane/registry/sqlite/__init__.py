"""The embedded SQLite registry: the default store, needing nothing installed. Only the modules
of this package import ``sqlite3``; nothing here imports ``routing``,
``translate`` or ``xds``. Importing it opens nothing.

- ``store``: ``SqliteRegistry`` (opening the file, the schema, transactions, writes, the reads
  through its own connection);
- ``reads``: SQL reads on one connection, row decoding, the change-log read;
- ``watch``: the watch loop and its probe connection (``PRAGMA data_version``);
- ``wake``: when the watch looks next (an inotify hint, else the poll);
- ``inotify``: Linux inotify through libc, a hint that the database's files were written.

Imports point one way: ``store`` uses ``reads`` and ``watch``; ``watch`` uses ``reads`` and
``wake``; ``wake`` uses ``inotify``; ``reads`` and ``inotify`` use none of the others.
"""

from control_plane.registry.sqlite.store import SqliteRegistry, path_of

__all__ = ["SqliteRegistry", "path_of"]
