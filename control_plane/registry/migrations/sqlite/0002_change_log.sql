-- Which servers each revision touched, so the watch reads only those (10,000 replicas).
CREATE TABLE changes (
    revision INTEGER NOT NULL,
    server   TEXT NOT NULL,
    PRIMARY KEY (revision, server)
);
