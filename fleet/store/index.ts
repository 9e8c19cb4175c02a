/** The controller's store: SQLite by default, PostgreSQL for `--db postgres://…`. */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { FleetError } from '../output.js';
import { openPgStore } from './pg.js';
import { openSqliteStore } from './sqlite.js';
import type { FleetStore } from './types.js';

export * from './types.js';
export { MIGRATIONS, SCHEMA_VERSION } from './schema.js';
export { modelKey } from './sql.js';
export { openPgStore } from './pg.js';
export { openSqliteStore } from './sqlite.js';

/** --state-dir, else EDGEQ_FLEET_STATE_DIR, else $XDG_STATE_HOME/edgeq-fleet (~/.local/state/edgeq-fleet). */
export function fleetStateDir(flag?: string): string {
  if (flag) return resolve(flag);
  if (process.env.EDGEQ_FLEET_STATE_DIR) return resolve(process.env.EDGEQ_FLEET_STATE_DIR);
  const xdg = process.env.XDG_STATE_HOME;
  return join(xdg && xdg.startsWith('/') ? xdg : join(homedir(), '.local', 'state'), 'edgeq-fleet');
}

export const isPostgresUrl = (db: string): boolean => /^postgres(ql)?:\/\//i.test(db);

/** Where the store is, for messages (a postgres URL without its password). */
export function describeDb(db: string): string {
  if (!isPostgresUrl(db)) return db;
  try {
    const u = new URL(db);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://…';
  }
}

/** `db`: a postgres:// URL or a SQLite file path; default fleet.db in the state directory. */
export async function openFleetStore(db: string | undefined, stateDir?: string): Promise<FleetStore> {
  const target = db ?? process.env.EDGEQ_FLEET_DB ?? join(fleetStateDir(stateDir), 'fleet.db');
  try {
    return isPostgresUrl(target) ? await openPgStore(target) : await openSqliteStore(target);
  } catch (e) {
    if (e instanceof FleetError) throw e;
    throw new FleetError('E_STORE', `cannot open the fleet store ${describeDb(target)}: ${(e as Error).message}`);
  }
}
