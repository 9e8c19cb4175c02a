/**
 * better-sqlite3 as the store uses it (types from @types/better-sqlite3). Only agent/store/
 * imports this file: no SQL lives anywhere else.
 */
import BetterSqlite3 from 'better-sqlite3';

export type Database = BetterSqlite3.Database;
/** A prepared statement whose rows are R. */
export type Statement<R = unknown> = BetterSqlite3.Statement<unknown[], R>;

/** An error thrown by SQLite itself; `code` is SQLite's (SQLITE_BUSY, SQLITE_NOTADB, …). */
export type SqliteErrorLike = InstanceType<BetterSqlite3.SqliteError>;

export function openDatabase(path: string, busyTimeoutMs: number): Database {
  return new BetterSqlite3(path, { timeout: busyTimeoutMs });
}

export function isSqliteError(e: unknown): e is SqliteErrorLike {
  return e instanceof BetterSqlite3.SqliteError;
}
