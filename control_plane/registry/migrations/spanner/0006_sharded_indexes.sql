-- Issue 29: no index puts every write at the end of one key range (docs/registry-capacity.md).
-- The watch indexes were keyed by a commit timestamp, the lease index by the lease expiry that
-- every heartbeat moves forward: each new entry went to the end of the index, one split. Each
-- is now keyed by a hash shard first (a stored generated column: nothing writes it), and the
-- readers read every shard's range in one request.
--   Shard       16 values  the watch indexes (written at the rate of changes, polled often)
--   LeaseShard 256 values  the lease index (written by every heartbeat, read once a second)
-- Every statement is idempotent (IF [NOT] EXISTS): a migration interrupted halfway (Spanner
-- applies a batch statement by statement and keeps those done) is safe to run again. The new
-- indexes are built before the old ones are dropped; a watch reading an old index fails once,
-- and its full read then picks the new ones (control_plane/registry/spanner/reads.py, Layout).
ALTER TABLE Servers ADD COLUMN IF NOT EXISTS Shard INT64 AS (ABS(MOD(FARM_FINGERPRINT(ServerName), 16))) STORED;
ALTER TABLE Replicas ADD COLUMN IF NOT EXISTS Shard INT64 AS (ABS(MOD(FARM_FINGERPRINT(Id), 16))) STORED;
ALTER TABLE Replicas ADD COLUMN IF NOT EXISTS LeaseShard INT64 AS (ABS(MOD(FARM_FINGERPRINT(Id), 256))) STORED;
ALTER TABLE Tombstones ADD COLUMN IF NOT EXISTS Shard INT64 AS (ABS(MOD(FARM_FINGERPRINT(Key), 16))) STORED;
CREATE INDEX IF NOT EXISTS ServersByShardUpdatedAt ON Servers(Shard, UpdatedAt) STORING (Workspace, Hostnames, Protocol, Spec, CreatedAt);
CREATE INDEX IF NOT EXISTS ReplicasByShardUpdatedAt ON Replicas(Shard, UpdatedAt) STORING (Host, Port, Region, Zone, Weight, State, LeaseExpiresAt, Revision, RegisteredAt);
CREATE NULL_FILTERED INDEX IF NOT EXISTS ReplicasByShardLease ON Replicas(LeaseShard, LeaseExpiresAt);
CREATE INDEX IF NOT EXISTS TombstonesByShardDeletedAt ON Tombstones(Shard, DeletedAt);
DROP INDEX IF EXISTS ServersByUpdatedAt;
DROP INDEX IF EXISTS ReplicasByUpdatedAt;
DROP INDEX IF EXISTS ReplicasByLease;
DROP INDEX IF EXISTS TombstonesByDeletedAt;
