-- The queue of jobs not tried yet: by route, each route's in the order
-- they fall due. A lease takes turns between the routes that have jobs
-- due, so a burst on one route does not hold back every other route's
-- dispatches. Jobs that were tried and wait for a retry are kept apart
-- (`jobs_retried`), so that a lease walks only the routes with new work
-- and not every route holding a job that waits out its backoff. A store
-- made before jobs kept their route gains the column first, so this is
-- created after it (see `ADDED_INDEXES`).
CREATE INDEX IF NOT EXISTS jobs_untried ON jobs (route, next_attempt_at) WHERE status = 'pending' AND attempts = 0;
