/**
 * The on-device store: one SQLite file holding models and their versions, captured samples,
 * runs, processed command ids and the outbox. Every function here is typed; no SQL lives
 * outside agent/store/.
 *
 * Durability. The file is in WAL mode with synchronous=NORMAL: every committed transaction
 * survives a crash of the process (SIGKILL, OOM kill, an exception), and no crash — of the
 * process or of the machine — can corrupt the file or expose half a transaction. Power loss
 * (or a kernel crash) may roll back the last transactions before a WAL sync. Writes that must
 * survive power loss too — model versions and activation, run state changes, processed
 * commands, outbox messages, capture policies — commit with synchronous=FULL, which syncs the
 * WAL at the commit. Captured samples and progress updates use NORMAL: losing the last ones
 * after a power cut costs nothing.
 *
 * Every multi-row write is one transaction (BEGIN IMMEDIATE, so a writer never has to upgrade
 * a read lock and fail with SQLITE_BUSY). Another process may read or write the same file at the
 * same time (the CLI while the daemon runs); waits for the write lock are bounded by busy_timeout.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { EdgeqError, fsError, isEdgeqError } from '../../quant/errors.js';
import { ownerAlive, processToken } from './process.js';
import { checkSample, checkSource, sampleHash, splitOf } from './sample.js';
import { MIGRATIONS } from './schema.js';
import { isSqliteError, openDatabase, type Database, type Statement } from './sqlite.js';
import {
  DEFAULT_POLICY, DEFAULT_STORE_LIMITS,
  type CapturePolicy, type CaptureStats, type ModelSummary, type ModelVersion, type NewModelVersion, type OfferedSample, type OfferOutcome, type PendingActivation, type StoreLimits,
  type JobRow, type NewJob, type OutboxMessage, type OutboxProperties, type OutboxRow, type ReplyTo, type RunError, type RunRow, type RunState, type SampleTensor, type Split, type StoredSample, type TensorSpec,
} from './types.js';

/** How long a writer waits for another connection's write lock before E_STORE_BUSY. */
export const BUSY_TIMEOUT_MS = 5000;
/** PRAGMA application_id of an edgeq store ('edgq'): tells it from other SQLite files. */
const APPLICATION_ID = 0x65646771;
/** Bytes the WAL file is truncated to after a checkpoint. */
const WAL_SIZE_LIMIT = 64 * 1024 * 1024;
/** Samples read per query by iterateSamples(). */
const PAGE_SAMPLES = 16;

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const SHA256 = /^[0-9a-f]{64}$/;
const POLICY_KEYS: ReadonlyArray<keyof CapturePolicy> = ['enabled', 'rate', 'maxSamples', 'maxBytes', 'retentionMs'];

interface VersionRow {
  model: string; version: number; kind: 'fp32' | 'int8'; path: string; sha256: string; size_bytes: number; inputs: string; parent_version: number | null; created_at: number;
  release: string | null; source: string | null; state: string;
}
interface PendingRow { model: string; version: number; fallback_version: number; served_ok: number; failures: number; starts: number; last_error: string | null; since: number }
interface PolicyRow { enabled: number; rate: number; max_samples: number; max_bytes: number; retention_ms: number }
interface StatsRow { seen: number; duplicates: number; sampled_out: number; evicted: number; refused: number; reservoir_full: number; disabled: number; pruned: number; store_full: number }
interface RunDbRow {
  id: string; kind: string; params: string; state: RunState; progress: number | null; result: string | null; error_code: string | null; error_message: string | null;
  created_at: number; started_at: number | null; finished_at: number | null; owner_pid: number | null; owner_token: string | null;
}
interface JobDbRow {
  pos: number; cmd_id: string; type: string; args: string; state: 'queued' | 'running'; reply_to: string | null; expires_at: number | null;
  run_id: string | null; created_at: number; started_at: number | null;
}
interface SampleJoinRow {
  id: number; sha256: string; split: Split; source: string; label: number | null; at: number; name: string; dtype: string; shape: string; data: Uint8Array;
}

function argError(message: string): EdgeqError {
  return new EdgeqError('E_ARGUMENT', message);
}

/** Maps an error thrown by SQLite to an EdgeqError naming the store file; others pass through. */
function storeError(e: unknown, path: string): unknown {
  if (isEdgeqError(e) || !isSqliteError(e)) return e;
  // Extended codes (SQLITE_IOERR_WRITE, SQLITE_BUSY_SNAPSHOT, …) map as their primary code.
  switch (e.code.split('_').slice(0, 2).join('_')) {
    case 'SQLITE_NOTADB':
      return new EdgeqError('E_STORE_INVALID', `${path} is not an edgeq store (not an SQLite database); move it aside or choose another state directory`, { cause: e });
    case 'SQLITE_CORRUPT':
      return new EdgeqError('E_STORE_INVALID', `${path} is damaged (${e.message}); move it aside to start a new store`, { cause: e });
    case 'SQLITE_BUSY':
    case 'SQLITE_LOCKED':
      return new EdgeqError('E_STORE_BUSY', `${path} is locked by another process for more than ${BUSY_TIMEOUT_MS / 1000} s; try again`, { cause: e });
    case 'SQLITE_CANTOPEN':
    case 'SQLITE_READONLY':
    case 'SQLITE_PERM':
    case 'SQLITE_IOERR':
    case 'SQLITE_FULL':
      return new EdgeqError('E_OUTPUT_UNWRITABLE', `cannot write the store ${path}: ${e.message}`, { cause: e });
    default:
      return e;
  }
}

function toJson(value: unknown, what: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value === undefined ? null : value);
  } catch (e) {
    throw new EdgeqError('E_ARGUMENT', `${what} cannot be stored as JSON: ${(e as Error).message}`, { cause: e });
  }
  if (text === undefined) throw argError(`${what} cannot be stored as JSON`);
  return text;
}

function checkInputs(inputs: unknown): TensorSpec[] {
  if (!Array.isArray(inputs)) throw argError('inputs must be a list of {name, dtype, shape}');
  const names = new Set<string>();
  return inputs.map((i: unknown, k) => {
    const spec = i as Partial<TensorSpec> | null;
    if (typeof spec !== 'object' || spec === null || typeof spec.name !== 'string' || spec.name === '') throw argError(`input ${k} needs a name`);
    if (names.has(spec.name)) throw argError(`input "${spec.name}" is declared twice`);
    names.add(spec.name);
    if (typeof spec.dtype !== 'string' || spec.dtype === '') throw argError(`input "${spec.name}" needs a dtype`);
    if (!Array.isArray(spec.shape) || spec.shape.some((d) => !(typeof d === 'string' || (Number.isSafeInteger(d) && d >= -1)))) {
      throw argError(`input "${spec.name}": shape must list whole numbers (-1 for dynamic) or dim names`);
    }
    return { name: spec.name, dtype: spec.dtype, shape: [...spec.shape] };
  });
}

function checkPolicyPatch(p: unknown): Partial<CapturePolicy> {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) throw argError('a capture policy must be an object');
  const out: Partial<CapturePolicy> = {};
  for (const [k, v] of Object.entries(p)) {
    if (v === undefined) continue;
    switch (k) {
      case 'enabled':
        if (typeof v !== 'boolean') throw argError(`capture policy "enabled" must be true or false, got ${JSON.stringify(v)}`);
        out.enabled = v;
        break;
      case 'rate':
        if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw argError(`capture policy "rate" must be a number from 0 to 1, got ${JSON.stringify(v)}`);
        out.rate = v;
        break;
      case 'maxSamples':
      case 'maxBytes':
      case 'retentionMs':
        if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw argError(`capture policy "${k}" must be a whole number, 0 or more, got ${JSON.stringify(v)}`);
        out[k] = v;
        break;
      default:
        throw argError(`unknown capture policy key "${k}" (known: ${POLICY_KEYS.join(', ')})`);
    }
  }
  return out;
}

/** Validates a new version of `name`; returns its checked inputs. */
function checkNewVersion(name: string, v: NewModelVersion): TensorSpec[] {
  if (typeof name !== 'string' || !MODEL_NAME.test(name)) {
    throw new EdgeqError('E_MODEL_NAME', `invalid model name ${JSON.stringify(name)}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  if (typeof v !== 'object' || v === null) throw argError('a model version needs kind, path, sha256, sizeBytes and inputs');
  if (v.kind !== 'fp32' && v.kind !== 'int8') throw argError(`model kind must be "fp32" or "int8", got ${JSON.stringify(v.kind)}`);
  if (typeof v.path !== 'string' || v.path === '') throw argError('a model version needs the path of its file');
  if (typeof v.sha256 !== 'string' || !SHA256.test(v.sha256)) throw argError(`sha256 must be 64 lowercase hex digits, got ${JSON.stringify(v.sha256)}`);
  if (!Number.isSafeInteger(v.sizeBytes) || v.sizeBytes < 0) throw argError(`sizeBytes must be a whole number of bytes, got ${JSON.stringify(v.sizeBytes)}`);
  if (v.parentVersion !== undefined && (!Number.isSafeInteger(v.parentVersion) || v.parentVersion < 1)) throw argError(`parentVersion must be a version number, got ${JSON.stringify(v.parentVersion)}`);
  if (v.release !== undefined && (typeof v.release !== 'string' || v.release === '')) throw argError(`release must be a non-empty string, got ${JSON.stringify(v.release)}`);
  if (v.source !== undefined && typeof v.source !== 'string') throw argError('source must be a string');
  return checkInputs(v.inputs);
}

function toVersion(r: VersionRow): ModelVersion {
  return {
    model: r.model, version: r.version, kind: r.kind, path: r.path, sha256: r.sha256, sizeBytes: r.size_bytes,
    inputs: JSON.parse(r.inputs) as TensorSpec[], parentVersion: r.parent_version, createdAt: r.created_at,
    ...(r.release !== null ? { release: r.release } : {}), ...(r.source !== null ? { source: r.source } : {}),
    ...(r.state === 'failed' ? { state: 'failed' as const } : {}),
  };
}

/** 2: telemetry; 1: a reply that is not a command's final answer; 0: a final reply or a report (never dropped). */
function droppability(msg: OutboxMessage): 0 | 1 | 2 {
  if (msg.kind === 'telemetry') return 2;
  if (msg.kind === 'report') return 0;
  let state: unknown;
  try {
    state = (JSON.parse(msg.payload) as { state?: unknown }).state;
  } catch {
    return 0;
  }
  return state === 'succeeded' || state === 'failed' || state === 'cancelled' ? 0 : 1;
}

function toPending(r: PendingRow): PendingActivation {
  return {
    model: r.model, version: r.version, fallbackVersion: r.fallback_version, servedOk: r.served_ok, failures: r.failures,
    starts: r.starts, lastError: r.last_error, since: r.since,
  };
}

function toRun(r: RunDbRow): RunRow {
  return {
    id: r.id, kind: r.kind, params: JSON.parse(r.params) as unknown, state: r.state, progress: r.progress,
    result: r.result === null ? null : (JSON.parse(r.result) as unknown),
    error: r.error_code === null ? null : { code: r.error_code, message: r.error_message ?? '' },
    createdAt: r.created_at, startedAt: r.started_at, finishedAt: r.finished_at, ownerPid: r.owner_pid,
  };
}

function toJob(r: JobDbRow): JobRow {
  return {
    pos: r.pos, cmdId: r.cmd_id, type: r.type, args: JSON.parse(r.args) as unknown, state: r.state,
    replyTo: r.reply_to === null ? null : (JSON.parse(r.reply_to) as ReplyTo), expiresAt: r.expires_at, runId: r.run_id,
    createdAt: r.created_at, startedAt: r.started_at,
  };
}

function checkOutboxMessage(msg: OutboxMessage): { qos: 0 | 1; properties: string | null } {
  if (typeof msg !== 'object' || msg === null || typeof msg.topic !== 'string' || msg.topic === '') throw argError('an outbox message needs a topic');
  if (typeof msg.payload !== 'string') throw argError('an outbox payload must be a string');
  if (msg.kind !== 'telemetry' && msg.kind !== 'reply' && msg.kind !== 'report') throw argError(`outbox kind must be telemetry, reply or report, got ${JSON.stringify(msg.kind)}`);
  const qos = msg.qos ?? 1;
  if (qos !== 0 && qos !== 1) throw argError(`outbox qos must be 0 or 1, got ${JSON.stringify(qos)}`);
  const p = msg.properties;
  if (p !== undefined && (typeof p !== 'object' || p === null || (p.correlationData !== undefined && typeof p.correlationData !== 'string'))) {
    throw argError('outbox properties must be an object; correlationData a base64 string');
  }
  return { qos, properties: p && Object.keys(p).length ? toJson(p, 'outbox properties') : null };
}

function asBytes(b: Uint8Array): Uint8Array {
  // SQLite BLOBs come back as Buffers; hand out plain Uint8Arrays on the same memory.
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function migrate(db: Database, path: string): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  const foreign = current === 0
    ? (db.prepare<[], { n: number }>('SELECT count(*) AS n FROM sqlite_schema').get()?.n ?? 0) > 0
    : db.pragma('application_id', { simple: true }) !== APPLICATION_ID;
  if (foreign) throw new EdgeqError('E_STORE_INVALID', `${path} is an SQLite database of another application, not an edgeq store; choose another state directory`);
  if (current > MIGRATIONS.length) {
    throw new EdgeqError('E_STORE_VERSION', `${path} has schema version ${current}, newer than this edgeq knows (${MIGRATIONS.length}); upgrade edgeq, or move the file aside to start a new store`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      // Another process may have migrated while this one waited for the lock.
      if ((db.pragma('user_version', { simple: true }) as number) !== v) return;
      if (v === 0) db.pragma(`application_id = ${APPLICATION_ID}`);
      db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${v + 1}`);
    }).immediate();
  }
}

export class Store {
  readonly path: string;
  private readonly db: Database;
  private readonly statements = new Map<string, Statement>();

  private limits: StoreLimits = { ...DEFAULT_STORE_LIMITS };
  private outboxDropped = 0;

  private constructor(path: string, db: Database) {
    this.path = path;
    this.db = db;
  }

  /** Sets some of the caps (StoreLimits); the rest keep their values. */
  setLimits(l: Partial<StoreLimits>): StoreLimits {
    for (const [k, v] of Object.entries(l)) {
      if (v === undefined) continue;
      if (!(k in DEFAULT_STORE_LIMITS)) throw argError(`unknown store limit ${JSON.stringify(k)}`);
      if (!Number.isSafeInteger(v) || v < 1) throw argError(`store limit ${k} must be a whole number, 1 or more, got ${JSON.stringify(v)}`);
      this.limits[k as keyof StoreLimits] = v;
    }
    return { ...this.limits };
  }

  /** Bytes of the database's pages in use (free pages not counted). */
  usedBytes(): number {
    const page = this.db.pragma('page_size', { simple: true }) as number;
    const pages = this.db.pragma('page_count', { simple: true }) as number;
    const free = this.db.pragma('freelist_count', { simple: true }) as number;
    return (pages - free) * page;
  }

  /**
   * Opens (creating if needed) the store at `path`: creates the parent directory (mode 0700),
   * turns on WAL, synchronous=NORMAL, foreign keys and a busy timeout, runs pending migrations,
   * then marks runs whose process is gone as interrupted.
   */
  static open(path: string): Store {
    const file = resolve(path);
    const dir = dirname(file);
    try {
      if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (e) {
      throw fsError(e, dir, true);
    }
    if (existsSync(file) && statSync(file).isDirectory()) throw new EdgeqError('E_STORE_INVALID', `${file} is a directory, not a store file`);
    try {
      // Captured inputs may be private: a new store is readable by its owner only (SQLite gives
      // the -wal and -shm files the same mode).
      if (!existsSync(file)) closeSync(openSync(file, 'a', 0o600));
    } catch (e) {
      throw fsError(e, file, true);
    }
    let db: Database;
    try {
      db = openDatabase(file, BUSY_TIMEOUT_MS);
    } catch (e) {
      throw storeError(e, file);
    }
    try {
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      if (mode !== 'wal') throw new EdgeqError('E_STORE_INVALID', `${file}: SQLite could not turn on WAL journaling (journal mode is ${String(mode)})`);
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      // A burst of large captures grows the WAL; after a checkpoint, truncate it back to this.
      db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT}`);
      migrate(db, file);
    } catch (e) {
      db.close();
      throw storeError(e, file);
    }
    const store = new Store(file, db);
    try {
      store.recoverInterruptedRuns();
    } catch (e) {
      store.close();
      throw e;
    }
    return store;
  }

  close(): void {
    if (!this.db.open) return;
    try {
      this.db.pragma('optimize');
    } catch {
      // optimize is advice to the query planner; closing matters more.
    }
    this.db.close();
  }

  /** PRAGMA integrity_check, then foreign_key_check: ['ok'] when both are clean. */
  integrityCheck(): string[] {
    const rows = this.db.pragma('integrity_check') as Array<{ integrity_check: string }>;
    const problems = rows.map((r) => r.integrity_check);
    if (problems.length !== 1 || problems[0] !== 'ok') return problems;
    const fk = this.db.pragma('foreign_key_check') as Array<{ table: string; rowid: number | null; parent: string }>;
    if (fk.length === 0) return ['ok'];
    return fk.map((r) => `foreign key violation: ${r.table} row ${String(r.rowid)} points to a missing ${r.parent} row`);
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  // ---- plumbing -------------------------------------------------------------------------------

  private q<R>(sql: string): Statement<R> {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s as Statement<R>;
  }

  /** Runs `fn` in one write transaction; `durable` commits with synchronous=FULL. */
  private write<T>(fn: () => T, durable = false): T {
    const tx = this.db.transaction(fn);
    try {
      if (!durable || this.db.inTransaction) return tx.immediate();
      this.db.pragma('synchronous = FULL');
      try {
        return tx.immediate();
      } finally {
        this.db.pragma('synchronous = NORMAL');
      }
    } catch (e) {
      throw storeError(e, this.path);
    }
  }

  private requireModel(name: string): void {
    if (!this.hasModel(name)) throw new EdgeqError('E_MODEL_UNKNOWN', `no model named "${name}" in the store`);
  }

  // ---- models ---------------------------------------------------------------------------------

  /** Adds a version (max + 1) of `name`, creating the model on first use. The new version is not activated. */
  addModelVersion(name: string, v: NewModelVersion): ModelVersion {
    const checked = checkNewVersion(name, v);
    return this.write(() => this.insertVersion(name, v, checked), true);
  }

  /** In a transaction: inserts version max + 1 of `name` (creating the model on first use). */
  private insertVersion(name: string, v: NewModelVersion, inputs: TensorSpec[]): ModelVersion {
    const now = Date.now();
    if (!this.hasModel(name)) {
      this.q('INSERT INTO models (name, active_version, created_at) VALUES (?, NULL, ?)').run(name, now);
      this.q('INSERT INTO capture_stats (model) VALUES (?)').run(name);
    }
    if (v.parentVersion !== undefined && !this.getVersion(name, v.parentVersion)) {
      throw new EdgeqError('E_MODEL_UNKNOWN', `model "${name}" has no version ${v.parentVersion} to be the parent`);
    }
    if (v.release !== undefined && this.findRelease(name, v.release)) {
      throw new EdgeqError('E_RELEASE_CONFLICT', `model "${name}" already has a version with release ${JSON.stringify(v.release)}`);
    }
    const max = this.q<{ m: number }>('SELECT coalesce(max(version), 0) AS m FROM model_versions WHERE model = ?').get(name)!.m;
    this.q('INSERT INTO model_versions (model, version, kind, path, sha256, size_bytes, inputs, parent_version, created_at, release, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(name, max + 1, v.kind, v.path, v.sha256, v.sizeBytes, JSON.stringify(inputs), v.parentVersion ?? null, now, v.release ?? null, v.source ?? null);
    return this.getVersion(name, max + 1)!;
  }

  /**
   * Adds a version of `name` and makes it the active one in ONE durable transaction: after a
   * crash either both happened or neither did. Returns the new version and the one it replaced.
   */
  addAndActivate(name: string, v: NewModelVersion): { version: ModelVersion; previous: ModelVersion | undefined } {
    const checked = checkNewVersion(name, v);
    return this.write(() => {
      const previous = this.activeVersion(name);
      const version = this.insertVersion(name, v, checked);
      this.switchActive(name, previous?.version, version.version, true);
      return { version, previous };
    }, true);
  }

  /** The version of `name` deployed with manifest version `release`, if any. */
  findRelease(name: string, release: string): ModelVersion | undefined {
    const r = this.q<VersionRow>('SELECT * FROM model_versions WHERE model = ? AND release = ?').get(name, release);
    return r && toVersion(r);
  }

  /**
   * Deletes the versions of `name` older than its newest `keep`, except the active one and any
   * version a kept version names as its parent; returns the deleted rows (their files are the
   * caller's to remove — see pathReferenced()). One durable transaction.
   */
  pruneVersions(name: string, keep: number): ModelVersion[] {
    if (!Number.isSafeInteger(keep) || keep < 1) throw argError(`keep must be a whole number, 1 or more, got ${JSON.stringify(keep)}`);
    return this.write(() => {
      const all = this.listVersions(name).reverse(); // newest first
      const active = this.q<{ a: number | null }>('SELECT active_version AS a FROM models WHERE name = ?').get(name)?.a ?? null;
      const kept = new Set(all.slice(0, keep).map((v) => v.version));
      if (active !== null) kept.add(active);
      const pending = this.pendingActivation(name);
      if (pending) kept.add(pending.fallbackVersion);
      // A kept version's parent stays (and so, transitively, its parent's parent).
      let grew = true;
      while (grew) {
        grew = false;
        for (const v of all) {
          if (kept.has(v.version) && v.parentVersion !== null && !kept.has(v.parentVersion)) {
            kept.add(v.parentVersion);
            grew = true;
          }
        }
      }
      const victims = all.filter((v) => !kept.has(v.version));
      // No kept version names a victim as parent, but one victim may name another: clear those links first.
      for (const v of victims) this.q('UPDATE model_versions SET parent_version = NULL WHERE model = ? AND parent_version = ?').run(name, v.version);
      for (const v of victims) this.q('DELETE FROM model_versions WHERE model = ? AND version = ?').run(name, v.version);
      return victims;
    }, true);
  }

  /** Whether any model version's file is `path`. */
  pathReferenced(path: string): boolean {
    return this.q('SELECT 1 FROM model_versions WHERE path = ? LIMIT 1').get(path) !== undefined;
  }

  listModels(): ModelSummary[] {
    return this.q<{ name: string; active_version: number | null; created_at: number; versions: number; samples: number }>(
      `SELECT m.name, m.active_version, m.created_at,
              (SELECT count(*) FROM model_versions v WHERE v.model = m.name) AS versions,
              (SELECT count(*) FROM samples s WHERE s.model = m.name) AS samples
         FROM models m ORDER BY m.name`,
    ).all().map((r) => ({ name: r.name, versions: r.versions, active: r.active_version, samples: r.samples, createdAt: r.created_at }));
  }

  listVersions(name: string): ModelVersion[] {
    return this.q<VersionRow>('SELECT * FROM model_versions WHERE model = ? ORDER BY version').all(name).map(toVersion);
  }

  getVersion(name: string, version: number): ModelVersion | undefined {
    const r = this.q<VersionRow>('SELECT * FROM model_versions WHERE model = ? AND version = ?').get(name, version);
    return r && toVersion(r);
  }

  activeVersion(name: string): ModelVersion | undefined {
    const r = this.q<VersionRow>('SELECT v.* FROM models m JOIN model_versions v ON v.model = m.name AND v.version = m.active_version WHERE m.name = ?').get(name);
    return r && toVersion(r);
  }

  /**
   * Makes `version` the active one. It replaces another active version, it is pending (see
   * pendingActivation) unless `probation` is false (rollbacks: going back to a version that served).
   */
  setActive(name: string, version: number, opts: { probation?: boolean } = {}): void {
    this.write(() => {
      this.requireModel(name);
      if (!this.getVersion(name, version)) throw new EdgeqError('E_MODEL_UNKNOWN', `model "${name}" has no version ${String(version)}`);
      this.switchActive(name, this.activeVersion(name)?.version, version, opts.probation ?? true);
    }, true);
  }

  /**
   * In a transaction: points `name` at `to` and keeps pending_activations in step. A pending
   * version replaced by another keeps the fallback it had, so the fallback is always a version
   * that served unconditionally.
   */
  private switchActive(name: string, from: number | undefined, to: number, probation: boolean): void {
    this.q('UPDATE models SET active_version = ? WHERE name = ?').run(to, name);
    this.q("UPDATE model_versions SET state = 'ready' WHERE model = ? AND version = ?").run(name, to);
    const pending = this.pendingActivation(name);
    const fallback = pending ? pending.fallbackVersion : from;
    if (!probation || fallback === undefined || fallback === to || from === to) {
      if (from !== to) this.q('DELETE FROM pending_activations WHERE model = ?').run(name);
      return;
    }
    this.q(
      `INSERT INTO pending_activations (model, version, fallback_version, since) VALUES (?, ?, ?, ?)
       ON CONFLICT (model) DO UPDATE SET version = excluded.version, fallback_version = excluded.fallback_version,
         served_ok = 0, failures = 0, starts = 0, last_error = NULL, since = excluded.since`,
    ).run(name, to, fallback, Date.now());
  }

  /** The activation of `name` still on probation, if any. */
  pendingActivation(name: string): PendingActivation | undefined {
    const r = this.q<PendingRow>('SELECT * FROM pending_activations WHERE model = ?').get(name);
    return r && toPending(r);
  }

  listPending(): PendingActivation[] {
    return this.q<PendingRow>('SELECT * FROM pending_activations ORDER BY model').all().map(toPending);
  }

  /**
   * Counts one inference of `name` v`version` if that version is pending (a failure also restarts
   * the count of successes: confirmation needs K in a row); returns
   * the pending row after the update, or undefined when the version is not pending.
   */
  recordServed(name: string, version: number, ok: boolean, error?: string): PendingActivation | undefined {
    return this.write(() => {
      const changed = ok
        ? this.q('UPDATE pending_activations SET served_ok = served_ok + 1 WHERE model = ? AND version = ?').run(name, version).changes
        : this.q('UPDATE pending_activations SET failures = failures + 1, served_ok = 0, last_error = ? WHERE model = ? AND version = ?').run((error ?? 'error').slice(0, 500), name, version).changes;
      return changed ? this.pendingActivation(name) : undefined;
    });
  }

  /** Counts a serving process start for every pending activation; returns them after the update. */
  recordPendingStarts(): PendingActivation[] {
    return this.write(() => {
      this.q('UPDATE pending_activations SET starts = starts + 1').run();
      return this.listPending();
    }, true);
  }

  /** Ends the probation of `name` v`version` (no-op if another version is pending now). */
  confirmActivation(name: string, version: number): boolean {
    return this.write(() => this.q('DELETE FROM pending_activations WHERE model = ? AND version = ?').run(name, version).changes > 0, true);
  }

  /**
   * The automatic rollback: if `version` is still the pending one, activates `to` (no probation)
   * and marks `version` failed, in one durable transaction. False if something else changed first.
   */
  failActivation(name: string, version: number, to: number): boolean {
    return this.write(() => {
      if (this.pendingActivation(name)?.version !== version) return false;
      if (!this.getVersion(name, to)) throw new EdgeqError('E_MODEL_UNKNOWN', `model "${name}" has no version ${String(to)}`);
      this.switchActive(name, version, to, false);
      this.q("UPDATE model_versions SET state = 'failed' WHERE model = ? AND version = ?").run(name, version);
      return true;
    }, true);
  }

  hasModel(name: string): boolean {
    return this.q('SELECT 1 FROM models WHERE name = ?').get(name) !== undefined;
  }

  // ---- capture --------------------------------------------------------------------------------

  getPolicy(name: string): CapturePolicy {
    this.requireModel(name);
    return this.policyOf(name);
  }

  private policyOf(name: string): CapturePolicy {
    const r = this.q<PolicyRow>('SELECT enabled, rate, max_samples, max_bytes, retention_ms FROM capture_policy WHERE model = ?').get(name);
    if (!r) return { ...DEFAULT_POLICY };
    return { enabled: r.enabled === 1, rate: r.rate, maxSamples: r.max_samples, maxBytes: r.max_bytes, retentionMs: r.retention_ms };
  }

  /** Changes some of a model's policy. Lower caps take effect at once: the smallest keys are evicted. */
  setPolicy(name: string, p: Partial<CapturePolicy>): CapturePolicy {
    const patch = checkPolicyPatch(p);
    return this.write(() => {
      this.requireModel(name);
      const next = { ...this.policyOf(name), ...patch };
      this.q(
        `INSERT INTO capture_policy (model, enabled, rate, max_samples, max_bytes, retention_ms) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (model) DO UPDATE SET enabled = excluded.enabled, rate = excluded.rate, max_samples = excluded.max_samples,
           max_bytes = excluded.max_bytes, retention_ms = excluded.retention_ms`,
      ).run(name, next.enabled ? 1 : 0, next.rate, next.maxSamples, next.maxBytes, next.retentionMs);
      const evicted = this.shrinkTo(name, next.maxSamples, next.maxBytes);
      if (evicted > 0) this.q('UPDATE capture_stats SET evicted = evicted + ? WHERE model = ?').run(evicted, name);
      return next;
    }, true);
  }

  /** Evicts the smallest keys until the kept set fits; returns how many went. In a transaction. */
  private shrinkTo(name: string, maxSamples: number, maxBytes: number): number {
    let { n, b } = this.q<{ n: number; b: number }>('SELECT count(*) AS n, coalesce(sum(bytes), 0) AS b FROM samples WHERE model = ?').get(name)!;
    if (n <= maxSamples && b <= maxBytes) return 0;
    const victims: number[] = [];
    for (const r of this.q<{ id: number; bytes: number }>('SELECT id, bytes FROM samples WHERE model = ? ORDER BY priority, bytes, id').iterate(name)) {
      if (n <= maxSamples && b <= maxBytes) break;
      victims.push(r.id);
      n--;
      b -= r.bytes;
    }
    for (const id of victims) this.q('DELETE FROM samples WHERE id = ?').run(id);
    return victims.length;
  }

  /** The version whose inputs samples must match: the active one, else the newest. */
  captureTarget(name: string): ModelVersion {
    const newest = (): ModelVersion | undefined => {
      const r = this.q<VersionRow>('SELECT * FROM model_versions WHERE model = ? ORDER BY version DESC LIMIT 1').get(name);
      return r && toVersion(r);
    };
    const v = this.activeVersion(name) ?? newest();
    if (!v) throw new EdgeqError('E_MODEL_UNKNOWN', this.hasModel(name) ? `model "${name}" has no version to capture for` : `no model named "${name}" in the store`);
    return v;
  }

  /** Counts `n` refused samples for `name` (what offerSamples does for a batch it refuses). */
  recordRefused(name: string, n: number): void {
    if (!(n > 0) || !this.hasModel(name)) return;
    this.write(() => this.q('UPDATE capture_stats SET refused = refused + ? WHERE model = ?').run(n, name));
  }

  /**
   * Offers captured samples to `name`'s reservoir in one transaction and says what became of
   * each. Every sample is first checked against the inputs of the active version (or the newest
   * when none is active); if any is bad, nothing of the batch is stored, the batch is counted as
   * refused, and the EdgeqError says which sample and input is wrong.
   *
   * Then, per sample in order: Bernoulli(rate) ('sampled-out'); content hash against the kept
   * samples ('duplicate'); a key u = rand(); if the caps leave no room, the kept samples with
   * the smallest keys below u are evicted until it fits — if they cannot make room, nothing
   * changes ('reservoir-full'). With equal-size samples this keeps exactly the maxSamples largest
   * keys: a uniform sample without replacement of every sample that passed the rate and dedup.
   * The store remembers only kept content: a sample equal to an evicted or pruned one counts as
   * new and draws a new key.
   */
  offerSamples(name: string, samples: OfferedSample[], rand: () => number = Math.random, opts: { imported?: boolean } = {}): OfferOutcome[] {
    if (!Array.isArray(samples)) throw argError('offerSamples takes a list of samples');
    const target = this.captureTarget(name);
    type Prepared = { tensors: SampleTensor[]; source: string; label: number | null; at: number; bytes: number };
    let prepared: Prepared[];
    try {
      const now = Date.now();
      prepared = samples.map((s, i) => {
        const where = `model "${name}" v${target.version}, sample ${i + 1} of ${samples.length}`;
        if (typeof s !== 'object' || s === null) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: not a sample`);
        const tensors = checkSample(where, target.inputs, s.tensors);
        checkSource(where, s.source);
        if (s.label !== undefined && s.label !== null && !Number.isSafeInteger(s.label)) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: label must be a whole number, got ${JSON.stringify(s.label)}`);
        if (s.at !== undefined && (!Number.isSafeInteger(s.at) || s.at < 0)) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: at must be a time in whole milliseconds since 1970, got ${JSON.stringify(s.at)}`);
        return { tensors, source: s.source, label: s.label ?? null, at: s.at ?? now, bytes: tensors.reduce((a, t) => a + t.data.byteLength, 0) };
      });
    } catch (e) {
      try {
        this.recordRefused(name, samples.length);
      } catch {
        // The refusal is the news; failing to count it must not hide it.
      }
      throw e;
    }
    if (prepared.length === 0) return [];
    return this.write(() => {
      const policy = this.policyOf(name);
      const d = { seen: prepared.length, duplicates: 0, sampledOut: 0, evicted: 0, reservoirFull: 0, disabled: 0, storeFull: 0 };
      const outcomes: OfferOutcome[] = [];
      // An import is asked for by a person: the policy's switch and rate govern traffic the
      // endpoint sees, not that; the caps, dedup and the reservoir still apply.
      if (!policy.enabled && !opts.imported) {
        d.disabled = prepared.length;
        outcomes.push(...prepared.map((): OfferOutcome => 'disabled'));
      } else {
        let { n: count, b: bytes } = this.q<{ n: number; b: number }>('SELECT count(*) AS n, coalesce(sum(bytes), 0) AS b FROM samples WHERE model = ?').get(name)!;
        let used = this.usedBytes();
        for (const s of prepared) {
          if (!opts.imported && !(rand() < policy.rate)) {
            d.sampledOut++;
            outcomes.push('sampled-out');
            continue;
          }
          const sha = sampleHash(s.tensors);
          if (this.q('SELECT 1 FROM samples WHERE model = ? AND sha256 = ?').get(name, sha) !== undefined) {
            d.duplicates++;
            outcomes.push('duplicate');
            continue;
          }
          const u = rand();
          let n = count + 1;
          let b = bytes + s.bytes;
          const victims: number[] = [];
          let fits = n <= policy.maxSamples && b <= policy.maxBytes;
          if (!fits && s.bytes <= policy.maxBytes && policy.maxSamples > 0) {
            for (const r of this.q<{ id: number; priority: number; bytes: number }>('SELECT id, priority, bytes FROM samples WHERE model = ? ORDER BY priority, bytes, id').iterate(name)) {
              if (r.priority >= u) break;
              victims.push(r.id);
              n--;
              b -= r.bytes;
              if (n <= policy.maxSamples && b <= policy.maxBytes) {
                fits = true;
                break;
              }
            }
          }
          if (!fits) {
            d.reservoirFull++;
            outcomes.push('reservoir-full');
            continue;
          }
          // The store's own cap (all models, runs, outbox): a sample that only fits by evicting
          // others of its model still goes in, since evictions free about what it takes.
          const freed = victims.length ? bytes - (b - s.bytes) : 0;
          if (used - freed + s.bytes > this.limits.maxBytes) {
            d.storeFull++;
            outcomes.push('store-full');
            continue;
          }
          used += s.bytes - freed;
          for (const id of victims) this.q('DELETE FROM samples WHERE id = ?').run(id);
          d.evicted += victims.length;
          const info = this.q('INSERT INTO samples (model, sha256, split, source, label, at, bytes, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
            .run(name, sha, splitOf(sha), s.source, s.label, s.at, s.bytes, u);
          const id = Number(info.lastInsertRowid);
          s.tensors.forEach((t, idx) => {
            this.q('INSERT INTO sample_tensors (sample_id, idx, name, dtype, shape, data) VALUES (?, ?, ?, ?, ?, ?)')
              .run(id, idx, t.name, t.dtype, JSON.stringify(t.shape), t.data);
          });
          count = n;
          bytes = b;
          outcomes.push('kept');
        }
      }
      this.q(
        `UPDATE capture_stats SET seen = seen + ?, duplicates = duplicates + ?, sampled_out = sampled_out + ?, evicted = evicted + ?,
           reservoir_full = reservoir_full + ?, disabled = disabled + ?, store_full = store_full + ? WHERE model = ?`,
      ).run(d.seen, d.duplicates, d.sampledOut, d.evicted, d.reservoirFull, d.disabled, d.storeFull, name);
      return outcomes;
    });
  }

  captureStats(name: string): CaptureStats {
    const s = this.q<StatsRow>('SELECT * FROM capture_stats WHERE model = ?').get(name);
    if (!s) throw new EdgeqError('E_MODEL_UNKNOWN', `no model named "${name}" in the store`);
    const k = this.q<{ n: number; b: number }>('SELECT count(*) AS n, coalesce(sum(bytes), 0) AS b FROM samples WHERE model = ?').get(name)!;
    return {
      seen: s.seen, kept: k.n, bytes: k.b, duplicates: s.duplicates, sampledOut: s.sampled_out, evicted: s.evicted,
      refused: s.refused, reservoirFull: s.reservoir_full, disabled: s.disabled, pruned: s.pruned, storeFull: s.store_full,
    };
  }

  countSamples(name: string, split: Split | 'all' = 'all'): number {
    if (split === 'all') return this.q<{ n: number }>('SELECT count(*) AS n FROM samples WHERE model = ?').get(name)!.n;
    return this.q<{ n: number }>('SELECT count(*) AS n FROM samples WHERE model = ? AND split = ?').get(name, split)!.n;
  }

  /**
   * The kept samples of `name`, oldest id first, read a few at a time: memory stays bounded
   * and no statement stays open between yields, so the caller may write to the store (capture
   * keeps running) while it iterates. Each sample is read whole, in one statement.
   */
  iterateSamples(name: string, opts: { split?: Split | 'all'; limit?: number } = {}): Generator<StoredSample, void, undefined> {
    this.requireModel(name);
    const split = opts.split ?? 'all';
    if (split !== 'all' && split !== 'calibration' && split !== 'holdout') throw argError(`split must be calibration, holdout or all, got ${JSON.stringify(split)}`);
    const limit = opts.limit ?? Infinity;
    if (limit !== Infinity && (!Number.isSafeInteger(limit) || limit < 0)) throw argError(`limit must be a whole number, 0 or more, got ${String(limit)}`);
    // Two statements rather than one with "(split = 'all' OR …)", so each walks its index in id order.
    const page = this.q<SampleJoinRow>(
      `SELECT s.id, s.sha256, s.split, s.source, s.label, s.at, t.name, t.dtype, t.shape, t.data
         FROM (SELECT * FROM samples WHERE model = @model ${split === 'all' ? '' : 'AND split = @split'} AND id > @after ORDER BY id LIMIT @limit) s
         JOIN sample_tensors t ON t.sample_id = s.id
        ORDER BY s.id, t.idx`,
    );
    return (function* () {
      let after = 0;
      let left = limit;
      while (left > 0) {
        const rows = page.all({ model: name, after, limit: Math.min(PAGE_SAMPLES, left), ...(split === 'all' ? {} : { split }) });
        if (rows.length === 0) return;
        let cur: StoredSample | undefined;
        for (const r of rows) {
          if (!cur || cur.id !== r.id) {
            if (cur) {
              yield cur;
              left--;
            }
            cur = { id: r.id, sha256: r.sha256, source: r.source, label: r.label, at: r.at, split: r.split, tensors: [] };
          }
          cur.tensors.push({ name: r.name, dtype: r.dtype, shape: JSON.parse(r.shape) as number[], data: asBytes(r.data) });
        }
        yield cur!;
        left--;
        after = cur!.id;
      }
    })();
  }

  /** Drops samples older than each model's retention (of `name` only, if given); returns how many. */
  pruneSamples(name?: string, now: number = Date.now()): number {
    if (name !== undefined) this.requireModel(name);
    return this.write(() => {
      const names = name !== undefined ? [name] : this.q<{ name: string }>('SELECT name FROM models').all().map((r) => r.name);
      let total = 0;
      for (const m of names) {
        const { retentionMs } = this.policyOf(m);
        if (retentionMs === 0) continue;
        const gone = this.q('DELETE FROM samples WHERE model = ? AND at < ?').run(m, now - retentionMs).changes;
        if (gone > 0) this.q('UPDATE capture_stats SET pruned = pruned + ? WHERE model = ?').run(gone, m);
        total += gone;
      }
      return total;
    });
  }

  // ---- runs -----------------------------------------------------------------------------------

  /** A new run in state 'queued', owned by this process. */
  createRun(kind: string, params: unknown): RunRow {
    if (typeof kind !== 'string' || !/^[a-z][a-z0-9._-]{0,63}$/.test(kind)) throw argError(`run kind must be a lowercase name such as "quantize", got ${JSON.stringify(kind)}`);
    const json = toJson(params, 'run parameters');
    const id = randomUUID();
    this.write(() => {
      this.q('INSERT INTO runs (id, kind, params, state, created_at, owner_pid, owner_token) VALUES (?, ?, ?, \'queued\', ?, ?, ?)')
        .run(id, kind, json, Date.now(), process.pid, processToken());
      // Finished runs beyond the newest keepRuns go: a daemon that optimizes every hour for years stays bounded.
      this.q(
        `DELETE FROM runs WHERE state IN ('succeeded', 'failed', 'interrupted', 'cancelled') AND id NOT IN (
           SELECT id FROM runs WHERE state IN ('succeeded', 'failed', 'interrupted', 'cancelled') ORDER BY created_at DESC, rowid DESC LIMIT ?)`,
      ).run(this.limits.keepRuns);
    }, true);
    return this.getRun(id)!;
  }

  private transition(id: string, from: readonly RunState[], verb: string, apply: (now: number) => void): void {
    this.write(() => {
      const r = this.q<{ state: RunState }>('SELECT state FROM runs WHERE id = ?').get(id);
      if (!r) throw new EdgeqError('E_RUN_UNKNOWN', `no run with id ${id}`);
      if (!from.includes(r.state)) throw new EdgeqError('E_RUN_STATE', `run ${id} is ${r.state}; cannot ${verb} it`);
      apply(Date.now());
    }, true);
  }

  /** queued → running; the calling process becomes the owner. */
  startRun(id: string): void {
    this.transition(id, ['queued'], 'start', (now) => {
      this.q('UPDATE runs SET state = \'running\', started_at = ?, owner_pid = ?, owner_token = ? WHERE id = ?').run(now, process.pid, processToken(), id);
    });
  }

  /** Progress of a running run, 0 to 1 (not synced to disk at once: losing the last one costs nothing). */
  setProgress(id: string, p: number): void {
    if (typeof p !== 'number' || !(p >= 0 && p <= 1)) throw argError(`progress must be a number from 0 to 1, got ${JSON.stringify(p)}`);
    this.write(() => {
      const r = this.q<{ state: RunState }>('SELECT state FROM runs WHERE id = ?').get(id);
      if (!r) throw new EdgeqError('E_RUN_UNKNOWN', `no run with id ${id}`);
      if (r.state !== 'running') throw new EdgeqError('E_RUN_STATE', `run ${id} is ${r.state}; only a running run has progress`);
      this.q('UPDATE runs SET progress = ? WHERE id = ?').run(p, id);
    });
  }

  /** queued|running → succeeded, with its result. */
  finishRun(id: string, result: unknown): void {
    const json = toJson(result, 'the run result');
    this.transition(id, ['queued', 'running'], 'finish', (now) => {
      this.q('UPDATE runs SET state = \'succeeded\', progress = 1, result = ?, finished_at = ? WHERE id = ?').run(json, now, id);
    });
  }

  /** queued|running → failed (or cancelled), with the error. */
  failRun(id: string, error: RunError, state: 'failed' | 'cancelled' = 'failed'): void {
    if (typeof error !== 'object' || error === null || typeof error.code !== 'string' || typeof error.message !== 'string') throw argError('a run error needs a code and a message');
    if (state !== 'failed' && state !== 'cancelled') throw argError(`a run ends as failed or cancelled, not ${JSON.stringify(state)}`);
    this.transition(id, ['queued', 'running'], state === 'failed' ? 'fail' : 'cancel', (now) => {
      this.q('UPDATE runs SET state = ?, error_code = ?, error_message = ?, finished_at = ? WHERE id = ?').run(state, error.code, error.message, now, id);
    });
  }

  getRun(id: string): RunRow | undefined {
    const r = this.q<RunDbRow>('SELECT * FROM runs WHERE id = ?').get(id);
    return r && toRun(r);
  }

  /** Newest first; at most `limit` (default 100). */
  listRuns(opts: { kind?: string; state?: RunState; limit?: number } = {}): RunRow[] {
    const limit = opts.limit ?? 100;
    if (!Number.isSafeInteger(limit) || limit < 0) throw argError(`limit must be a whole number, got ${JSON.stringify(limit)}`);
    return this.q<RunDbRow>(
      `SELECT * FROM runs WHERE (@kind IS NULL OR kind = @kind) AND (@state IS NULL OR state = @state)
        ORDER BY created_at DESC, rowid DESC LIMIT @limit`,
    ).all({ kind: opts.kind ?? null, state: opts.state ?? null, limit }).map(toRun);
  }

  /**
   * Queued or running runs whose owner process is gone (or is another process with a reused
   * pid) become 'interrupted' with error E_INTERRUPTED. Store.open() calls it; returns how many.
   */
  recoverInterruptedRuns(): number {
    const orphans = this.q<{ id: string; owner_pid: number | null; owner_token: string | null }>('SELECT id, owner_pid, owner_token FROM runs WHERE state IN (\'queued\', \'running\')')
      .all()
      .filter((r) => !ownerAlive(r.owner_pid, r.owner_token));
    if (orphans.length === 0) return 0;
    return this.write(() => {
      let n = 0;
      const now = Date.now();
      for (const r of orphans) {
        const message = `interrupted: the process that ran it (pid ${String(r.owner_pid)}) ended before it finished`;
        n += this.q('UPDATE runs SET state = \'interrupted\', error_code = \'E_INTERRUPTED\', error_message = ?, finished_at = ? WHERE id = ? AND state IN (\'queued\', \'running\')')
          .run(message, now, r.id).changes;
      }
      return n;
    }, true);
  }

  // ---- fleet link: processed commands and the outbox -----------------------------------------

  /** The stored reply of a command already processed, or undefined. */
  commandSeen(id: string): { reply: unknown } | undefined {
    const r = this.q<{ reply: string }>('SELECT reply FROM processed_commands WHERE id = ?').get(id);
    return r && { reply: JSON.parse(r.reply) as unknown };
  }

  /** Records (or updates) the reply to command `id`; a repeated command gets this reply. */
  recordCommand(id: string, reply: unknown): void {
    if (typeof id !== 'string' || id === '') throw argError('a command id must be a non-empty string');
    const json = toJson(reply, 'the command reply');
    this.write(() => {
      this.q('INSERT INTO processed_commands (id, reply, at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET reply = excluded.reply, at = excluded.at').run(id, json, Date.now());
    }, true);
  }

  /** Forgets commands recorded before `before` (ms since 1970), except those with a job still queued or running; returns how many. */
  pruneCommands(before: number): number {
    return this.write(() => this.q('DELETE FROM processed_commands WHERE at < ? AND id NOT IN (SELECT cmd_id FROM jobs)').run(before).changes);
  }

  /** Queues a message to send; returns its id (ids only grow, never reused). */
  enqueueOutbox(msg: OutboxMessage): number {
    checkOutboxMessage(msg);
    return this.write(() => this.insertOutbox(msg), true);
  }

  /** In a transaction. */
  private insertOutbox(msg: OutboxMessage): number {
    const { qos, properties } = checkOutboxMessage(msg);
    const id = Number(this.q('INSERT INTO outbox (topic, payload, kind, qos, created_at, properties, droppable) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(msg.topic, msg.payload, msg.kind, qos, Date.now(), properties, droppability(msg)).lastInsertRowid);
    this.trimOutbox();
    return id;
  }

  /** In a transaction: drops the oldest droppable messages (telemetry first) until the outbox is within its caps, or nothing droppable is left. */
  private trimOutbox(): void {
    let { n, b } = this.q<{ n: number; b: number }>('SELECT count(*) AS n, coalesce(sum(length(CAST(payload AS BLOB))), 0) AS b FROM outbox').get()!;
    const { outboxMaxMessages: maxN, outboxMaxBytes: maxB } = this.limits;
    if (n <= maxN && b <= maxB) return;
    const victims: number[] = [];
    for (const r of this.q<{ id: number; bytes: number }>('SELECT id, length(CAST(payload AS BLOB)) AS bytes FROM outbox WHERE droppable > 0 ORDER BY droppable DESC, id').iterate()) {
      if (n <= maxN && b <= maxB) break;
      victims.push(r.id);
      n--;
      b -= r.bytes;
    }
    for (const id of victims) this.q('DELETE FROM outbox WHERE id = ?').run(id);
    this.outboxDropped += victims.length;
  }

  /**
   * The outbox's size against its caps: `dropped` counts messages trimmed since the store was
   * opened; `full` says it is over a cap with only messages that must not be dropped (final
   * replies, reports), so the daemon takes no new jobs until the broker has acknowledged some.
   */
  outboxState(): { messages: number; bytes: number; dropped: number; full: boolean } {
    const sizes = (where: string) => this.q<{ n: number; b: number }>(`SELECT count(*) AS n, coalesce(sum(length(CAST(payload AS BLOB))), 0) AS b FROM outbox ${where}`).get()!;
    const all = sizes('');
    const kept = sizes('WHERE droppable = 0');
    return { messages: all.n, bytes: all.b, dropped: this.outboxDropped, full: kept.n >= this.limits.outboxMaxMessages || kept.b >= this.limits.outboxMaxBytes };
  }

  /** The oldest `limit` messages, oldest first, without removing them. */
  peekOutbox(limit: number): OutboxRow[] {
    if (!Number.isSafeInteger(limit) || limit < 0) throw argError(`limit must be a whole number, got ${JSON.stringify(limit)}`);
    return this.q<Omit<OutboxRow, 'properties'> & { properties: string | null }>('SELECT id, topic, payload, kind, qos, attempts, properties FROM outbox ORDER BY id LIMIT ?')
      .all(limit)
      .map(({ properties, ...r }) => (properties === null ? r : { ...r, properties: JSON.parse(properties) as OutboxProperties }));
  }

  /** Counts one more send attempt of message `id`. */
  noteOutboxAttempt(id: number): void {
    this.write(() => this.q('UPDATE outbox SET attempts = attempts + 1 WHERE id = ?').run(id));
  }

  /** Removes message `id` once the broker has it (no error if it is already gone). */
  ackOutbox(id: number): void {
    this.write(() => this.q('DELETE FROM outbox WHERE id = ?').run(id));
  }

  outboxSize(): number {
    return this.q<{ n: number }>('SELECT count(*) AS n FROM outbox').get()!.n;
  }

  // ---- the daemon's job queue -----------------------------------------------------------------

  /**
   * Accepts a job in one durable transaction: the job joins the end of the queue, `reply` is
   * recorded as command `job.cmdId`'s answer so far, and `messages` are queued to send.
   */
  acceptJob(job: NewJob, reply: unknown, messages: OutboxMessage[] = []): JobRow {
    if (typeof job !== 'object' || job === null || typeof job.cmdId !== 'string' || job.cmdId === '') throw argError('a job needs the id of its command');
    if (typeof job.type !== 'string' || job.type === '') throw argError('a job needs a type');
    if (job.expiresAt !== undefined && !Number.isSafeInteger(job.expiresAt)) throw argError('a job\'s expiry must be a time in whole milliseconds');
    const args = toJson(job.args ?? {}, 'job arguments');
    const replyTo = job.replyTo ? toJson(job.replyTo, 'the job\'s response topic') : null;
    const answer = toJson(reply, 'the command reply');
    messages.forEach(checkOutboxMessage);
    return this.write(() => {
      if (this.q('SELECT 1 FROM jobs WHERE cmd_id = ?').get(job.cmdId) !== undefined) throw new EdgeqError('E_RUN_STATE', `command ${job.cmdId} is already queued`);
      const now = Date.now();
      this.q('INSERT INTO jobs (cmd_id, type, args, state, reply_to, expires_at, created_at) VALUES (?, ?, ?, \'queued\', ?, ?, ?)')
        .run(job.cmdId, job.type, args, replyTo, job.expiresAt ?? null, now);
      this.q('INSERT INTO processed_commands (id, reply, at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET reply = excluded.reply, at = excluded.at').run(job.cmdId, answer, now);
      for (const m of messages) this.insertOutbox(m);
      return this.getJob(job.cmdId)!;
    }, true);
  }

  /**
   * Answers command `cmdId` in one durable transaction: records `reply` (what a repeat of the
   * command gets), queues `messages`, and removes the command's job if it has one.
   */
  answerCommand(cmdId: string, reply: unknown, messages: OutboxMessage[] = []): void {
    if (typeof cmdId !== 'string' || cmdId === '') throw argError('a command id must be a non-empty string');
    const answer = toJson(reply, 'the command reply');
    messages.forEach(checkOutboxMessage);
    this.write(() => {
      this.q('INSERT INTO processed_commands (id, reply, at) VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET reply = excluded.reply, at = excluded.at').run(cmdId, answer, Date.now());
      for (const m of messages) this.insertOutbox(m);
      this.q('DELETE FROM jobs WHERE cmd_id = ?').run(cmdId);
    }, true);
  }

  getJob(cmdId: string): JobRow | undefined {
    const r = this.q<JobDbRow>('SELECT * FROM jobs WHERE cmd_id = ?').get(cmdId);
    return r && toJob(r);
  }

  /** Every job, in queue order (a running one first). */
  listJobs(): JobRow[] {
    return this.q<JobDbRow>('SELECT * FROM jobs ORDER BY state = \'running\' DESC, pos').all().map(toJob);
  }

  countJobs(state?: 'queued' | 'running'): number {
    return this.q<{ n: number }>('SELECT count(*) AS n FROM jobs WHERE (@state IS NULL OR state = @state)').get({ state: state ?? null })!.n;
  }

  /** queued → running. */
  startJob(cmdId: string): void {
    this.write(() => {
      const changed = this.q('UPDATE jobs SET state = \'running\', started_at = ? WHERE cmd_id = ? AND state = \'queued\'').run(Date.now(), cmdId).changes;
      if (changed === 0) throw new EdgeqError('E_RUN_STATE', `command ${cmdId} has no queued job to start`);
    }, true);
  }

  /** Records the run a running job works in. */
  setJobRun(cmdId: string, runId: string): void {
    this.write(() => this.q('UPDATE jobs SET run_id = ? WHERE cmd_id = ?').run(runId, cmdId), true);
  }

  /** running → queued, keeping its place (a job stopped by a shutdown runs again at the next start). */
  requeueJob(cmdId: string): void {
    this.write(() => this.q('UPDATE jobs SET state = \'queued\', started_at = NULL, run_id = NULL WHERE cmd_id = ?').run(cmdId), true);
  }
}
