/*
 * 1.0 -> 1.1: canary_requests.fallback is NOT NULL DEFAULT false.  Rows
 * loaded by hand without it (NULL) vanished from every report that filters
 * on NOT fallback; they are read as "not a fallback", like the worker's.
 * Before the rollups' backfill (30_rollups.sql), so that it reads no NULL.
 */
UPDATE canary_requests SET fallback = false WHERE fallback IS NULL;
ALTER TABLE canary_requests ALTER COLUMN fallback SET DEFAULT false;
ALTER TABLE canary_requests ALTER COLUMN fallback SET NOT NULL;
