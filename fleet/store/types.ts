/** What the controller keeps: devices (from their retained status), replies and reports. */
import type { Reply, Report, Status } from '../../agent/protocol/index.js';

export interface DeviceFilter {
  /** true: online only; false: offline (or never seen online) only. */
  online?: boolean;
  arch?: string;
  profile?: string;
  ids?: readonly string[];
}

/** The newest report of a device, in brief. */
export interface ReportSummary {
  id: string;
  model: string;
  speedup: number;
  sizeRatio: number;
  dropPoints: number | null;
  agreement: number | null;
  createdAt: string;
}

export interface DeviceRecord {
  deviceId: string;
  /** null: never seen a status (known only from a reply or report). */
  online: boolean | null;
  /** seq of the status last applied. */
  seq: number | null;
  arch: string | null;
  cpu: string | null;
  hostname: string | null;
  profile: string | null;
  agentVersion: string | null;
  /** Active models: name → version and kind (from the last birth). */
  models: Record<string, { version: number; kind: string }>;
  /** The device's time of its last status. */
  statusAt: string | null;
  /** The controller's time of the last message from this device. */
  lastSeen: string;
  /** The last birth (a will only flips `online`). */
  status: Status | null;
  lastReport: ReportSummary | null;
}

export interface ReportQuery {
  /** A model name as the report gives it ("fmnist@v1", "model.onnx") or without version/extension ("fmnist"). */
  model?: string;
  deviceId?: string;
  /** Only the newest report per device and model. */
  latest?: boolean;
}

export interface ReportRecord {
  id: string;
  deviceId: string;
  model: string;
  int8Model: string;
  createdAt: string;
  receivedAt: string;
  profile: string;
  method: string;
  fp32Bytes: number;
  int8Bytes: number;
  fp32P50Ms: number;
  int8P50Ms: number;
  speedup: number;
  accuracySource: string;
  samples: number;
  fp32Top1: number | null;
  int8Top1: number | null;
  dropPoints: number | null;
  agreement: number | null;
}

export interface ReplyRecord {
  cmdId: string;
  deviceId: string;
  state: Reply['state'];
  type: string | null;
  progress: number | null;
  at: string;
  receivedAt: string;
  reply: Reply;
}

/**
 * The controller's store. SQLite (one controller, zero set-up) and PostgreSQL (several
 * controllers sharing one fleet table) implement it with the same schema and queries.
 */
export interface FleetStore {
  readonly kind: 'sqlite' | 'postgres';
  /** Creates or upgrades the schema; returns its version. Safe to run from several instances at once. */
  migrate(): Promise<number>;
  /**
   * Applies a status message. A birth (online) always applies; a will (online: false) whose seq
   * is older than the stored birth's is ignored (the broker published an old session's will
   * after the device had come back). Returns whether it applied.
   */
  upsertStatus(deviceId: string, status: Status): Promise<boolean>;
  /** Stores a reply once (a redelivered duplicate is ignored); returns whether it was new. */
  recordReply(deviceId: string, reply: Reply): Promise<boolean>;
  /** Stores a report once, keyed by report.id; returns whether it was new. */
  recordReport(deviceId: string, report: Report): Promise<boolean>;
  devices(filter?: DeviceFilter): Promise<DeviceRecord[]>;
  reports(query?: ReportQuery): Promise<ReportRecord[]>;
  replies(cmdId: string): Promise<ReplyRecord[]>;
  close(): Promise<void>;
}
