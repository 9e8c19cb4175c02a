/**
 * The fleet store once, over a tiny driver: every query is written here with `?` placeholders;
 * the PostgreSQL driver numbers them ($1, $2, …). Both engines run the same statements (upserts
 * with ON CONFLICT, CASE, correlated subqueries), so the two stores cannot drift apart.
 */
import { createHash } from 'node:crypto';
import type { Reply, Report, Status } from '../../agent/protocol/index.js';
import { FleetError } from '../output.js';
import { MIGRATIONS, SCHEMA_TABLE } from './schema.js';
import type { DeviceFilter, DeviceRecord, FleetStore, ReplyRecord, ReportQuery, ReportRecord, ReportSummary } from './types.js';

export type SqlValue = string | number | null;
export type Row = Record<string, unknown>;

export interface SqlDriver {
  readonly kind: 'sqlite' | 'postgres';
  /** Runs a statement; returns the number of rows it changed. */
  run(sql: string, params?: readonly SqlValue[]): Promise<number>;
  all(sql: string, params?: readonly SqlValue[]): Promise<Row[]>;
  /** Runs `fn` in one transaction that holds the engine's lock for migrations (one migrator at a time). */
  exclusive<T>(fn: (tx: Pick<SqlDriver, 'run' | 'all'>) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** `?` → `$1`, `$2`, … (the queries here hold no `?` inside string literals). */
export function numberPlaceholders(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

/** The name a report's model is filed under: without "@vN" (store versions) and ".onnx". */
export function modelKey(name: string): string {
  return name.replace(/@v\d+$/, '').replace(/\.onnx$/i, '');
}

const now = (): string => new Date().toISOString();
/** ISO times in one form (ms, Z), so that they sort as text in both engines. */
const iso = (t: string): string => new Date(t).toISOString();
const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
const str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

const UPSERT_STATUS = `
INSERT INTO devices (device_id, online, seq, arch, cpu, hostname, profile, agent_version, models, status, status_at, last_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
  online = excluded.online,
  seq = excluded.seq,
  arch = CASE WHEN excluded.online = 1 THEN excluded.arch ELSE COALESCE(excluded.arch, devices.arch) END,
  cpu = CASE WHEN excluded.online = 1 THEN excluded.cpu ELSE COALESCE(excluded.cpu, devices.cpu) END,
  hostname = CASE WHEN excluded.online = 1 THEN excluded.hostname ELSE COALESCE(excluded.hostname, devices.hostname) END,
  profile = CASE WHEN excluded.online = 1 THEN excluded.profile ELSE COALESCE(excluded.profile, devices.profile) END,
  agent_version = CASE WHEN excluded.online = 1 THEN excluded.agent_version ELSE COALESCE(excluded.agent_version, devices.agent_version) END,
  models = CASE WHEN excluded.online = 1 THEN excluded.models ELSE COALESCE(excluded.models, devices.models) END,
  status = CASE WHEN excluded.online = 1 THEN excluded.status ELSE devices.status END,
  status_at = excluded.status_at,
  last_seen = CASE WHEN excluded.last_seen > devices.last_seen THEN excluded.last_seen ELSE devices.last_seen END
WHERE excluded.online = 1 OR devices.seq IS NULL OR excluded.seq >= devices.seq`;

/** A device known only from a reply or report gets a row (online unknown); a known one is seen now. */
const TOUCH_DEVICE = `
INSERT INTO devices (device_id, last_seen) VALUES (?, ?)
ON CONFLICT (device_id) DO UPDATE SET last_seen = excluded.last_seen WHERE excluded.last_seen > devices.last_seen`;

const INSERT_REPLY = `
INSERT INTO replies (reply_key, cmd_id, device_id, state, type, progress, at, received_at, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (reply_key) DO NOTHING`;

const INSERT_REPORT = `
INSERT INTO reports (id, device_id, model, model_key, int8_model, created_at, received_at, profile, method,
  fp32_bytes, int8_bytes, fp32_p50_ms, int8_p50_ms, speedup, accuracy_source, samples, fp32_top1, int8_top1,
  drop_points, agreement, body)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING`;

const DEVICES = `
SELECT d.device_id, d.online, d.seq, d.arch, d.cpu, d.hostname, d.profile, d.agent_version, d.models, d.status,
  d.status_at, d.last_seen, r.id AS r_id, r.model AS r_model, r.speedup AS r_speedup, r.fp32_bytes AS r_fp32_bytes,
  r.int8_bytes AS r_int8_bytes, r.drop_points AS r_drop_points, r.agreement AS r_agreement, r.created_at AS r_created_at
FROM devices d
LEFT JOIN reports r ON r.id = (
  SELECT r2.id FROM reports r2 WHERE r2.device_id = d.device_id ORDER BY r2.created_at DESC, r2.id DESC LIMIT 1)`;

const REPORT_COLUMNS = `r.id, r.device_id, r.model, r.int8_model, r.created_at, r.received_at, r.profile, r.method, r.fp32_bytes,
  r.int8_bytes, r.fp32_p50_ms, r.int8_p50_ms, r.speedup, r.accuracy_source, r.samples, r.fp32_top1, r.int8_top1,
  r.drop_points, r.agreement`;

const NEWER_REPORT = `NOT EXISTS (SELECT 1 FROM reports r2 WHERE r2.device_id = r.device_id AND r2.model_key = r.model_key
  AND (r2.created_at > r.created_at OR (r2.created_at = r.created_at AND r2.id > r.id)))`;

const REPLIES = `
SELECT cmd_id, device_id, state, type, progress, at, received_at, body FROM replies WHERE cmd_id = ?
ORDER BY at, CASE state WHEN 'accepted' THEN 0 WHEN 'queued' THEN 1 WHEN 'running' THEN 2 ELSE 3 END, progress, received_at`;

/** A device's last_seen is refreshed by replies and reports at most this often (one write fewer per message). */
const TOUCH_EVERY_MS = 5000;

export class SqlFleetStore implements FleetStore {
  private readonly touched = new Map<string, number>();

  constructor(private readonly db: SqlDriver) {}

  private async touch(deviceId: string, t: string): Promise<void> {
    const ms = Date.parse(t);
    if (ms - (this.touched.get(deviceId) ?? -Infinity) < TOUCH_EVERY_MS) return;
    await this.db.run(TOUCH_DEVICE, [deviceId, t]);
    this.touched.set(deviceId, ms);
  }

  get kind(): 'sqlite' | 'postgres' {
    return this.db.kind;
  }

  async migrate(): Promise<number> {
    return this.db.exclusive(async (tx) => {
      await tx.run(SCHEMA_TABLE);
      const rows = await tx.all('SELECT MAX(version) AS v FROM fleet_schema');
      const current = num(rows[0]?.v) ?? 0;
      const newest = MIGRATIONS[MIGRATIONS.length - 1].version;
      if (current > newest) throw new FleetError('E_STORE_NEWER', `the fleet store has schema version ${current}; this edgeq knows up to ${newest}: upgrade edgeq`);
      for (const m of MIGRATIONS) {
        if (m.version <= current) continue;
        for (const s of m.statements) await tx.run(s);
        await tx.run('INSERT INTO fleet_schema (version, applied_at) VALUES (?, ?)', [m.version, now()]);
      }
      return newest;
    });
  }

  async upsertStatus(deviceId: string, status: Status): Promise<boolean> {
    // A will usually carries only {online: false, seq}; what it does carry of the device's facts is kept.
    const birth = status.online;
    const changed = await this.db.run(UPSERT_STATUS, [
      deviceId,
      birth ? 1 : 0,
      status.seq,
      status.device?.arch ?? null,
      status.device?.cpu ?? null,
      status.device?.hostname ?? null,
      status.profile?.name ?? null,
      status.agentVersion ?? null,
      birth || status.models ? JSON.stringify(status.models ?? {}) : null,
      birth ? JSON.stringify(status) : null,
      iso(status.at),
      now(),
    ]);
    return changed > 0;
  }

  async recordReply(deviceId: string, reply: Reply): Promise<boolean> {
    const body = JSON.stringify(reply);
    const key = createHash('sha256').update(deviceId).update('\n').update(body).digest('hex');
    const t = now();
    const added = await this.db.run(INSERT_REPLY, [key, reply.cmdId, deviceId, reply.state, reply.type ?? null, reply.progress ?? null, iso(reply.at), t, body]);
    await this.touch(deviceId, t);
    return added > 0;
  }

  async recordReport(deviceId: string, report: Report): Promise<boolean> {
    const t = now();
    const a = report.accuracy;
    const added = await this.db.run(INSERT_REPORT, [
      report.id,
      deviceId,
      report.model.name,
      modelKey(report.model.name),
      report.int8.name,
      iso(report.createdAt),
      t,
      report.quantization.profile,
      report.quantization.method,
      report.model.sizeBytes,
      report.int8.sizeBytes,
      report.latency.fp32.p50Ms,
      report.latency.int8.p50Ms,
      report.latency.speedup,
      a.source,
      a.samples,
      a.fp32Top1 ?? null,
      a.int8Top1 ?? null,
      a.dropPoints ?? null,
      a.agreement ?? null,
      JSON.stringify(report),
    ]);
    await this.touch(deviceId, t);
    return added > 0;
  }

  async devices(filter: DeviceFilter = {}): Promise<DeviceRecord[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (filter.online === true) where.push('d.online = 1');
    if (filter.online === false) where.push('(d.online IS NULL OR d.online = 0)');
    if (filter.arch !== undefined) {
      where.push('d.arch = ?');
      params.push(filter.arch);
    }
    if (filter.profile !== undefined) {
      where.push('d.profile = ?');
      params.push(filter.profile);
    }
    if (filter.ids !== undefined) {
      if (filter.ids.length === 0) return [];
      where.push(`d.device_id IN (${filter.ids.map(() => '?').join(', ')})`);
      params.push(...filter.ids);
    }
    const sql = `${DEVICES}${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY d.device_id`;
    return (await this.db.all(sql, params)).map(toDevice);
  }

  async reports(query: ReportQuery = {}): Promise<ReportRecord[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (query.model !== undefined) {
      where.push('(r.model = ? OR r.model_key = ?)');
      params.push(query.model, query.model);
    }
    if (query.deviceId !== undefined) {
      where.push('r.device_id = ?');
      params.push(query.deviceId);
    }
    if (query.latest) where.push(NEWER_REPORT);
    const sql = `SELECT ${REPORT_COLUMNS} FROM reports r${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY r.device_id, r.model_key, r.created_at DESC, r.id`;
    return (await this.db.all(sql, params)).map(toReport);
  }

  async replies(cmdId: string): Promise<ReplyRecord[]> {
    return (await this.db.all(REPLIES, [cmdId])).map((r) => ({
      cmdId: String(r.cmd_id),
      deviceId: String(r.device_id),
      state: String(r.state) as Reply['state'],
      type: str(r.type),
      progress: num(r.progress),
      at: String(r.at),
      receivedAt: String(r.received_at),
      reply: JSON.parse(String(r.body)) as Reply,
    }));
  }

  close(): Promise<void> {
    return this.db.close();
  }
}

function toDevice(r: Row): DeviceRecord {
  const online = num(r.online);
  const lastReport: ReportSummary | null =
    r.r_id === null || r.r_id === undefined
      ? null
      : {
          id: String(r.r_id),
          model: String(r.r_model),
          speedup: Number(r.r_speedup),
          sizeRatio: Number(r.r_int8_bytes) / Number(r.r_fp32_bytes),
          dropPoints: num(r.r_drop_points),
          agreement: num(r.r_agreement),
          createdAt: String(r.r_created_at),
        };
  return {
    deviceId: String(r.device_id),
    online: online === null ? null : online === 1,
    seq: num(r.seq),
    arch: str(r.arch),
    cpu: str(r.cpu),
    hostname: str(r.hostname),
    profile: str(r.profile),
    agentVersion: str(r.agent_version),
    models: r.models ? (JSON.parse(String(r.models)) as DeviceRecord['models']) : {},
    statusAt: str(r.status_at),
    lastSeen: String(r.last_seen),
    status: r.status ? (JSON.parse(String(r.status)) as Status) : null,
    lastReport,
  };
}

function toReport(r: Row): ReportRecord {
  return {
    id: String(r.id),
    deviceId: String(r.device_id),
    model: String(r.model),
    int8Model: String(r.int8_model),
    createdAt: String(r.created_at),
    receivedAt: String(r.received_at),
    profile: String(r.profile),
    method: String(r.method),
    fp32Bytes: Number(r.fp32_bytes),
    int8Bytes: Number(r.int8_bytes),
    fp32P50Ms: Number(r.fp32_p50_ms),
    int8P50Ms: Number(r.int8_p50_ms),
    speedup: Number(r.speedup),
    accuracySource: String(r.accuracy_source),
    samples: Number(r.samples),
    fp32Top1: num(r.fp32_top1),
    int8Top1: num(r.int8_top1),
    dropPoints: num(r.drop_points),
    agreement: num(r.agreement),
  };
}
