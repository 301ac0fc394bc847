-- 0007: sub-runs. A run an agent started (`runs.start`) names its parent, and keeps its
-- answer: a resumed parent is handed it instead of running the child again.

-- The run that started this one; NULL for a run a caller asked for.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
-- A sub-run's answer, as its parent got it; NULL for other runs (their answers are not
-- kept).
ALTER TABLE runs ADD COLUMN output BLOB;
-- A parent's children, for `spawner runs show`.
CREATE INDEX runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
