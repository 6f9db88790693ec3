-- servers, replicas (interleaved), tombstones for deletes, and the indexes the watch needs.
CREATE TABLE Servers (
  ServerName STRING(63) NOT NULL,
  Workspace  STRING(63) NOT NULL,
  Hostnames  ARRAY<STRING(253)> NOT NULL,
  Protocol   STRING(16) NOT NULL,
  Spec       STRING(MAX),
  UpdatedAt  TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
) PRIMARY KEY (ServerName);

-- The watch reads changed rows straight from these indexes (STORING), by key range.
CREATE INDEX ServersByUpdatedAt ON Servers(UpdatedAt) STORING (Workspace, Hostnames, Protocol, Spec);

CREATE TABLE Replicas (
  ServerName      STRING(63) NOT NULL,
  Id              STRING(32) NOT NULL,
  Host            STRING(253) NOT NULL,
  Port            INT64 NOT NULL,
  Region          STRING(63) NOT NULL,
  Zone            STRING(63) NOT NULL,
  Weight          INT64 NOT NULL,
  State           STRING(16) NOT NULL,
  LeaseExpiresAt  TIMESTAMP,
  UpdatedAt       TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
) PRIMARY KEY (ServerName, Id),
  INTERLEAVE IN PARENT Servers ON DELETE CASCADE;

CREATE UNIQUE NULL_FILTERED INDEX ReplicasById ON Replicas(Id);
CREATE INDEX ReplicasByUpdatedAt ON Replicas(UpdatedAt)
  STORING (Host, Port, Region, Zone, Weight, State, LeaseExpiresAt);
CREATE NULL_FILTERED INDEX ReplicasByLease ON Replicas(LeaseExpiresAt);

-- A delete leaves a tombstone so the watch sees it; the control plane removes old ones.
CREATE TABLE Tombstones (
  Kind       STRING(16) NOT NULL,
  Key        STRING(63) NOT NULL,
  DeletedAt  TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
) PRIMARY KEY (Kind, Key);

CREATE INDEX TombstonesByDeletedAt ON Tombstones(DeletedAt);
