/** The fleet store in one SQLite file (better-sqlite3): one controller, zero set-up. */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { SqlFleetStore, type Row, type SqlDriver, type SqlValue } from './sql.js';

const BUSY_TIMEOUT_MS = 10_000;

class SqliteDriver implements SqlDriver {
  readonly kind = 'sqlite' as const;
  private readonly statements = new Map<string, BetterSqlite3.Statement<unknown[], Row>>();

  constructor(private readonly db: BetterSqlite3.Database) {}

  private prepare(sql: string): BetterSqlite3.Statement<unknown[], Row> {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare<unknown[], Row>(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  async run(sql: string, params: readonly SqlValue[] = []): Promise<number> {
    return this.prepare(sql).run(...params).changes;
  }

  async all(sql: string, params: readonly SqlValue[] = []): Promise<Row[]> {
    return this.prepare(sql).all(...params);
  }

  async exclusive<T>(fn: (tx: Pick<SqlDriver, 'run' | 'all'>) => Promise<T>): Promise<T> {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const out = await fn(this);
      this.db.exec('COMMIT');
      return out;
    } catch (e) {
      if (this.db.inTransaction) this.db.exec('ROLLBACK');
      throw e;
    }
  }

  async close(): Promise<void> {
    this.statements.clear();
    if (this.db.open) this.db.close();
  }
}

/** Opens (creating it and its directory if needed) and migrates the SQLite store at `path`. */
export async function openSqliteStore(path: string): Promise<SqlFleetStore> {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new BetterSqlite3(path, { timeout: BUSY_TIMEOUT_MS });
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  const store = new SqlFleetStore(new SqliteDriver(db));
  try {
    await store.migrate();
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}
