-- Which version of its server a replica runs (issue 26), and when it was first registered (a
-- traffic split's `latest` is the revision that appeared last). Rows written before these
-- columns have NULL: revision "" (none) and registered_at 0.
ALTER TABLE replicas ADD COLUMN revision TEXT;
ALTER TABLE replicas ADD COLUMN registered_at REAL;
