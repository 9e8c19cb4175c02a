/**
 * The store's schema as ordered migrations. MIGRATIONS[i] takes a database from
 * PRAGMA user_version i to i + 1; each runs in its own transaction together with the
 * user_version bump, so a crash mid-migration leaves the previous version intact.
 * Never edit a migration that has shipped: append a new one.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: models, versions, capture, runs, processed commands, outbox.
  `
  CREATE TABLE models (
    name TEXT PRIMARY KEY,
    active_version INTEGER,
    created_at INTEGER NOT NULL,
    FOREIGN KEY (name, active_version) REFERENCES model_versions (model, version)
  );

  CREATE TABLE model_versions (
    model TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    version INTEGER NOT NULL CHECK (version >= 1),
    kind TEXT NOT NULL CHECK (kind IN ('fp32', 'int8')),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
    inputs TEXT NOT NULL,               -- JSON TensorSpec[]
    parent_version INTEGER,
    state TEXT NOT NULL DEFAULT 'ready', -- for deploy (staged, ready, retired, …)
    created_at INTEGER NOT NULL,
    PRIMARY KEY (model, version),
    FOREIGN KEY (model, parent_version) REFERENCES model_versions (model, version)
  );

  CREATE TABLE capture_policy (
    model TEXT PRIMARY KEY REFERENCES models (name) ON DELETE CASCADE,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    rate REAL NOT NULL CHECK (rate >= 0 AND rate <= 1),
    max_samples INTEGER NOT NULL CHECK (max_samples >= 0),
    max_bytes INTEGER NOT NULL CHECK (max_bytes >= 0),
    retention_ms INTEGER NOT NULL CHECK (retention_ms >= 0)
  );

  CREATE TABLE capture_stats (
    model TEXT PRIMARY KEY REFERENCES models (name) ON DELETE CASCADE,
    seen INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    sampled_out INTEGER NOT NULL DEFAULT 0,
    evicted INTEGER NOT NULL DEFAULT 0,
    refused INTEGER NOT NULL DEFAULT 0,
    reservoir_full INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    pruned INTEGER NOT NULL DEFAULT 0
  );

  -- One row per kept sample; its tensors are in sample_tensors. priority is the reservoir key.
  CREATE TABLE samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: iteration by id is insertion order
    model TEXT NOT NULL REFERENCES models (name) ON DELETE CASCADE,
    sha256 TEXT NOT NULL,
    split TEXT NOT NULL CHECK (split IN ('calibration', 'holdout')),
    source TEXT NOT NULL,
    label INTEGER,
    at INTEGER NOT NULL,
    bytes INTEGER NOT NULL CHECK (bytes >= 0),
    priority REAL NOT NULL,
    UNIQUE (model, sha256)
  );
  CREATE INDEX samples_by_priority ON samples (model, priority, bytes); -- covers eviction scans and byte sums
  CREATE INDEX samples_by_split ON samples (model, split); -- (model, split, id): a split in id order
  CREATE INDEX samples_by_model ON samples (model);        -- (model, id): all samples in id order
  CREATE INDEX samples_by_time ON samples (model, at);

  CREATE TABLE sample_tensors (
    sample_id INTEGER NOT NULL REFERENCES samples (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,                -- JSON number[]
    data BLOB NOT NULL,
    UNIQUE (sample_id, idx)
  );

  CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,               -- JSON
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    progress REAL,
    result TEXT,                        -- JSON
    error_code TEXT,
    error_message TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    owner_pid INTEGER,
    owner_token TEXT                    -- identifies the owner process beyond its pid (pids are reused)
  );
  CREATE INDEX runs_by_state ON runs (state);
  CREATE INDEX runs_by_time ON runs (created_at);
  CREATE INDEX runs_by_kind ON runs (kind, created_at);

  CREATE TABLE processed_commands (
    id TEXT PRIMARY KEY,
    reply TEXT NOT NULL,                -- JSON
    at INTEGER NOT NULL
  );
  CREATE INDEX processed_commands_by_time ON processed_commands (at);

  CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, -- ids are never reused, so a late ack cannot hit a newer message
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('telemetry', 'reply', 'report')),
    qos INTEGER NOT NULL CHECK (qos IN (0, 1)),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  );
  `,
  // 2: the daemon's persisted job queue, and MQTT 5 properties of outbox messages.
  `
  -- Jobs the fleet sent that wait for or hold the daemon's single worker; a finished job's row
  -- goes (its answer stays in processed_commands). pos is the queue order.
  CREATE TABLE jobs (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    cmd_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    args TEXT NOT NULL,                 -- JSON
    state TEXT NOT NULL CHECK (state IN ('queued', 'running')),
    reply_to TEXT,                      -- JSON {topic, correlationData?}: the command's MQTT 5 response topic
    expires_at INTEGER,                 -- a job not started by then fails (the command's message expiry)
    run_id TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER
  );

  ALTER TABLE outbox ADD COLUMN properties TEXT; -- JSON MQTT 5 publish properties (correlationData in base64)
  `,
  // 3: deployed artifacts: the manifest's release string and where the file came from.
  `
  ALTER TABLE model_versions ADD COLUMN release TEXT;  -- the deploy manifest's "version" (NULL for local registrations)
  ALTER TABLE model_versions ADD COLUMN source TEXT;   -- the manifest's url or path
  CREATE UNIQUE INDEX model_versions_by_release ON model_versions (model, release) WHERE release IS NOT NULL;
  `,
  // 4: activations on probation: a newly activated version stays pending until it has served
  // enough inferences without error; repeated failures or restarts while pending roll it back.
  `
  CREATE TABLE pending_activations (
    model TEXT PRIMARY KEY REFERENCES models (name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    fallback_version INTEGER NOT NULL,  -- the last version that served without being pending
    served_ok INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    starts INTEGER NOT NULL DEFAULT 0,  -- serving processes started while this was pending
    last_error TEXT,
    since INTEGER NOT NULL
  );
  `,
  // 5: resource bounds: which outbox messages may be dropped when the outbox is over its cap,
  // and captured samples refused because the store reached its size cap.
  `
  -- 2: telemetry; 1: a reply that is not a command's final answer (accepted, running, rejected:
  -- superseded by a later reply, or given afresh when the command comes again); 0: never dropped.
  ALTER TABLE outbox ADD COLUMN droppable INTEGER NOT NULL DEFAULT 0 CHECK (droppable IN (0, 1, 2));
  ALTER TABLE capture_stats ADD COLUMN store_full INTEGER NOT NULL DEFAULT 0;
  `,
];
