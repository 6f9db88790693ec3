-- servers, replicas and the revision counter the watch polls.
CREATE TABLE servers (
    name       TEXT PRIMARY KEY,
    workspace  TEXT NOT NULL DEFAULT 'default',
    hostnames  TEXT NOT NULL,            -- JSON array of strings
    protocol   TEXT NOT NULL,
    spec       TEXT,                     -- JSON object: routing policy fields
    updated_at REAL NOT NULL
);
CREATE TABLE replicas (
    id               TEXT PRIMARY KEY,
    server           TEXT NOT NULL REFERENCES servers(name) ON DELETE CASCADE,
    host             TEXT NOT NULL,
    port             INTEGER NOT NULL,
    region           TEXT NOT NULL,
    zone             TEXT NOT NULL DEFAULT '',
    weight           INTEGER NOT NULL DEFAULT 100,
    state            TEXT NOT NULL,
    lease_expires_at REAL,
    updated_at       REAL NOT NULL
);
CREATE INDEX replicas_by_server ON replicas(server);
CREATE INDEX replicas_by_lease ON replicas(lease_expires_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
INSERT INTO meta VALUES ('revision', 0), ('committed_at', 0.0);
