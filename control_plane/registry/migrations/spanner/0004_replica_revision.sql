-- Which version of its server a replica runs (issue 26), and when it was first registered (a
-- traffic split's `latest` is the revision that appeared last). Rows written before these
-- columns have NULL: revision "" (none) and registered_at 0. The watch reads replicas from
-- ReplicasByUpdatedAt, so the index stores the new columns too.
ALTER TABLE Replicas ADD COLUMN Revision STRING(63);
ALTER TABLE Replicas ADD COLUMN RegisteredAt TIMESTAMP;
DROP INDEX ReplicasByUpdatedAt;
CREATE INDEX ReplicasByUpdatedAt ON Replicas(UpdatedAt) STORING (Host, Port, Region, Zone, Weight, State, LeaseExpiresAt, Revision, RegisteredAt);
