/**
 * The fleet store in PostgreSQL (node-postgres): several controller instances that split the
 * reports through a shared subscription write one fleet table, and each answers for the whole
 * fleet. Same schema and statements as SQLite (sql.ts); only the placeholders are numbered.
 */
import pg from 'pg';
import { numberPlaceholders, SqlFleetStore, type Row, type SqlDriver, type SqlValue } from './sql.js';

/** pg_advisory_xact_lock key held while migrating, so instances starting together migrate one at a time. */
const MIGRATION_LOCK = 0x65647166; // "edqf"

class PgDriver implements SqlDriver {
  readonly kind = 'postgres' as const;
  private readonly texts = new Map<string, string>();

  constructor(private readonly pool: pg.Pool) {}

  private text(sql: string): string {
    let t = this.texts.get(sql);
    if (t === undefined) {
      t = numberPlaceholders(sql);
      this.texts.set(sql, t);
    }
    return t;
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return (await this.pool.query(this.text(sql), params as SqlValue[])).rowCount ?? 0;
  }

  async all(sql: string, params: readonly SqlValue[] = []): Promise<Row[]> {
    return (await this.pool.query<Row>(this.text(sql), params as SqlValue[])).rows;
  }

  async exclusive<T>(fn: (tx: Pick<SqlDriver, 'run' | 'all'>) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    const tx = {
      run: async (sql: string, params: readonly SqlValue[] = []) => (await client.query(this.text(sql), params as SqlValue[])).rowCount ?? 0,
      all: async (sql: string, params: readonly SqlValue[] = []) => (await client.query<Row>(this.text(sql), params as SqlValue[])).rows,
    };
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      const out = await fn(tx);
      await client.query('COMMIT');
      return out;
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

export interface PgStoreOptions {
  /** Extra pool settings, e.g. `options: '-c search_path=…'` (tests use a schema of their own). */
  pool?: pg.PoolConfig;
}

/** Connects to `url` (postgres://…) and migrates. */
export async function openPgStore(url: string, opts: PgStoreOptions = {}): Promise<SqlFleetStore> {
  const pool = new pg.Pool({ connectionString: url, max: 4, connectionTimeoutMillis: 10_000, ...opts.pool });
  // An idle client losing its connection must not crash the controller; the next query reconnects.
  pool.on('error', (e) => process.stderr.write(JSON.stringify({ level: 'warn', event: 'postgres_idle_error', error: e.message }) + '\n'));
  const store = new SqlFleetStore(new PgDriver(pool));
  try {
    await store.migrate();
  } catch (e) {
    await store.close().catch(() => undefined);
    throw e;
  }
  return store;
}
