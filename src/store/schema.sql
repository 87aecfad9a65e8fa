CREATE TABLE IF NOT EXISTS deliveries (
    id            TEXT PRIMARY KEY,
    route         TEXT NOT NULL,
    received_at   INTEGER NOT NULL,
    status        TEXT NOT NULL,
    dedupe_key    TEXT,
    request       TEXT NOT NULL,
    error         TEXT,
    finished_at   INTEGER,
    -- Set on deliveries of a debounced route while their window is open.
    debounce_first_at INTEGER,
    -- How many later webhooks were merged into this one by debounce.
    coalesced     INTEGER NOT NULL DEFAULT 0,
    -- Where a debounced delivery's jobs go (see `debounce_targets`): only
    -- webhooks bound for the same places join its window.
    debounce_targets TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS deliveries_dedupe ON deliveries (route, dedupe_key) WHERE dedupe_key IS NOT NULL;
-- Each route's deliveries newest first: listing by route reads only its
-- own, and listing them all merges the routes' newest (see `list`).
CREATE INDEX IF NOT EXISTS deliveries_route ON deliveries (route, received_at);
CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, received_at);

-- The dedupe keys of webhooks merged into another delivery by debounce, so
-- that a repeat of one of them is still recognised as a duplicate.
CREATE TABLE IF NOT EXISTS coalesced_keys (
    route        TEXT NOT NULL,
    dedupe_key   TEXT NOT NULL,
    delivery_id  TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    PRIMARY KEY (route, dedupe_key)
);
CREATE INDEX IF NOT EXISTS coalesced_keys_delivery ON coalesced_keys (delivery_id);

CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY,
    delivery_id     TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    -- The delivery's route, kept beside each job so that the queue can
    -- take turns between routes (see `jobs_untried.sql`).
    route           TEXT,
    target_index    INTEGER NOT NULL,
    repo            TEXT NOT NULL,
    label           TEXT NOT NULL,
    path            TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    failures        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    leased_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_delivery ON jobs (delivery_id);

CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    started_at   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status_code  INTEGER,
    detail       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id);

-- One row, rewritten by every readiness check: a check that commits a
-- write fails as the next webhook's commit would.
CREATE TABLE IF NOT EXISTS readiness (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  INTEGER NOT NULL
);

-- One row: when the pause GitHub's last rate limit asked for ends, so that
-- a restart inside it does not send into a limit GitHub still enforces.
CREATE TABLE IF NOT EXISTS github_pause (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    until_ms    INTEGER NOT NULL
);

-- The credentials GitHub refuses (401) and since when, while the relay that
-- found it runs: the listings say why untried dispatches wait. A start
-- clears it, as the relay then tries each credential afresh.
CREATE TABLE IF NOT EXISTS refused_credentials (
    credential  TEXT PRIMARY KEY,
    since_ms    INTEGER NOT NULL
) WITHOUT ROWID;
