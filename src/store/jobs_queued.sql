-- The queue: pending jobs by route, each route's in the order they fall
-- due. A lease takes turns between the routes that have jobs due, so a
-- burst on one route does not hold back every other route's dispatches.
-- A store made before jobs kept their route gains the column first, so
-- this is created after it (see `ADDED_INDEXES`).
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (route, next_attempt_at) WHERE status = 'pending';
