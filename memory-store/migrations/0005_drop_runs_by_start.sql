-- Run ids begin with their start time (12 hex digits of Unix milliseconds), so the primary
-- key already orders runs by start: listing all runs newest first walks it backwards. The
-- index on started_at_ms only cost every run record another b-tree write.
DROP INDEX IF EXISTS runs_by_start;
