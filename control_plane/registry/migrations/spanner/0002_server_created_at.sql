-- When each server was first written: the first to claim a hostname keeps it. Rows written
-- before this column have NULL, read as 0 (they claimed before any new server). The watch
-- reads servers from ServersByUpdatedAt, so the index stores the new column too.
ALTER TABLE Servers ADD COLUMN CreatedAt TIMESTAMP OPTIONS (allow_commit_timestamp = true);
DROP INDEX ServersByUpdatedAt;
CREATE INDEX ServersByUpdatedAt ON Servers(UpdatedAt) STORING (Workspace, Hostnames, Protocol, Spec, CreatedAt);
