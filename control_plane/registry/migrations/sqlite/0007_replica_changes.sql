-- Which replicas each revision touched, beside the servers in `changes`: a revision that logs a
-- server there and some of its replicas here changed only those replicas, so the watch reads
-- those rows, not the server's 1,000 (or 10,000). A server logged in `changes` with none of its
-- replicas here (a server write, a delete, an older or foreign writer) is read whole.
CREATE TABLE replica_changes (
    revision INTEGER NOT NULL,
    server   TEXT NOT NULL,
    replica  TEXT NOT NULL,
    PRIMARY KEY (revision, server, replica)
);
