-- Each control-plane process's published load (control_plane/fleet/): one row per publisher,
-- written every report interval. Writing one never moves meta.revision: routing ignores it.
CREATE TABLE load_publishers (
    publisher TEXT PRIMARY KEY,
    grp TEXT NOT NULL,
    written_at REAL NOT NULL,
    interval REAL NOT NULL,
    totals BLOB NOT NULL
);
CREATE INDEX load_publishers_by_written_at ON load_publishers(written_at);
