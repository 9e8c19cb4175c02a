/**
 * The fleet store's schema, one text for SQLite and PostgreSQL: TEXT for strings, ISO times and
 * JSON; BIGINT for sizes and seqs; DOUBLE PRECISION for figures; INTEGER 0/1 for booleans
 * (better-sqlite3 cannot bind booleans). `fleet_schema` records the versions applied.
 */

export interface Migration {
  version: number;
  statements: readonly string[];
}

export const SCHEMA_TABLE = `CREATE TABLE IF NOT EXISTS fleet_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    statements: [
      `CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        online INTEGER,
        seq BIGINT,
        arch TEXT,
        cpu TEXT,
        hostname TEXT,
        profile TEXT,
        agent_version TEXT,
        models TEXT,
        status TEXT,
        status_at TEXT,
        last_seen TEXT NOT NULL
      )`,
      `CREATE TABLE replies (
        reply_key TEXT PRIMARY KEY,
        cmd_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        state TEXT NOT NULL,
        type TEXT,
        progress DOUBLE PRECISION,
        at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        body TEXT NOT NULL
      )`,
      `CREATE INDEX replies_cmd ON replies (cmd_id, at)`,
      `CREATE TABLE reports (
        id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        model TEXT NOT NULL,
        model_key TEXT NOT NULL,
        int8_model TEXT NOT NULL,
        created_at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        profile TEXT NOT NULL,
        method TEXT NOT NULL,
        fp32_bytes BIGINT NOT NULL,
        int8_bytes BIGINT NOT NULL,
        fp32_p50_ms DOUBLE PRECISION NOT NULL,
        int8_p50_ms DOUBLE PRECISION NOT NULL,
        speedup DOUBLE PRECISION NOT NULL,
        accuracy_source TEXT NOT NULL,
        samples INTEGER NOT NULL,
        fp32_top1 DOUBLE PRECISION,
        int8_top1 DOUBLE PRECISION,
        drop_points DOUBLE PRECISION,
        agreement DOUBLE PRECISION,
        body TEXT NOT NULL
      )`,
      `CREATE INDEX reports_device ON reports (device_id, model_key, created_at)`,
      `CREATE INDEX reports_model ON reports (model_key, created_at)`,
    ],
  },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;
