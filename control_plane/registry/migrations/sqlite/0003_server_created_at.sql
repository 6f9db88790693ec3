-- When each server was first written: the first to claim a hostname keeps it. Rows written
-- before this column have NULL, read as 0 (they claimed before any new server).
ALTER TABLE servers ADD COLUMN created_at REAL;
