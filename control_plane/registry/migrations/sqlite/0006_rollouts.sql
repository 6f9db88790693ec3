-- A server's rollout (control_plane/rollout/): one row per server, its record as JSON in body,
-- the driver holding it (holder) and until when (lease_expires_at). Writing one never moves
-- meta.revision: routing ignores it (the split it writes is a server write of its own).
CREATE TABLE rollouts (
    server TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    holder TEXT NOT NULL DEFAULT '',
    lease_expires_at REAL NOT NULL DEFAULT 0,
    written_at REAL NOT NULL,
    body TEXT NOT NULL
);
