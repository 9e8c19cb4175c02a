/** The store's public types: what the rest of the agent codes against. */

export type TensorDtype = 'float32' | 'float64' | 'uint8' | 'int8' | 'int32' | 'int64' | 'bool' | 'float16' | 'int16' | 'uint16';

/** Bytes per element of each dtype the store can capture. */
export const DTYPE_SIZE: Readonly<Record<TensorDtype, number>> = {
  float32: 4, float64: 8, uint8: 1, int8: 1, int32: 4, int64: 8, bool: 1, float16: 2, int16: 2, uint16: 2,
};

export function isTensorDtype(d: unknown): d is TensorDtype {
  return typeof d === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZE, d);
}

/** A model input as the model declares it; string or -1 dims are dynamic. */
export interface TensorSpec {
  name: string;
  dtype: TensorDtype | string;
  shape: Array<number | string>;
}

/** One input of ONE sample: leading dim 1; `data` holds the raw little-endian bytes, C order. */
export interface SampleTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

export type ModelKind = 'fp32' | 'int8';

export interface ModelVersion {
  model: string;
  version: number;
  kind: ModelKind;
  path: string;
  sha256: string;
  sizeBytes: number;
  inputs: TensorSpec[];
  parentVersion: number | null;
  createdAt: number;
  /** The deploy manifest's version string (only on deployed versions). */
  release?: string;
  /** The deploy manifest's url or path (only on deployed versions). */
  source?: string;
  /** 'failed' once an activation of it was rolled back automatically; absent while usable. */
  state?: 'failed';
}

export interface NewModelVersion {
  kind: ModelKind;
  path: string;
  sha256: string;
  sizeBytes: number;
  inputs: TensorSpec[];
  parentVersion?: number;
  /** The deploy manifest's version string; unique per model. */
  release?: string;
  /** Where the file came from (a deploy manifest's url or path). */
  source?: string;
}

/** Caps on what the store holds (agent config: store.maxBytes, outbox.*, runs.keep). */
export interface StoreLimits {
  /** Captured samples are refused ('store-full') once the pages in use plus the sample exceed this. */
  maxBytes: number;
  /** Past either outbox cap the oldest telemetry, then the oldest non-final replies, are dropped; final replies and reports never. */
  outboxMaxMessages: number;
  outboxMaxBytes: number;
  /** Finished runs kept (newest first); older ones are deleted when a run is created. */
  keepRuns: number;
}

export const DEFAULT_STORE_LIMITS: StoreLimits = {
  maxBytes: 1024 * 1024 * 1024,
  outboxMaxMessages: 10_000,
  outboxMaxBytes: 16 * 1024 * 1024,
  keepRuns: 1000,
};

/** A version activated but not yet confirmed by serving (store migration 4). */
export interface PendingActivation {
  model: string;
  version: number;
  /** What an automatic rollback goes back to: the last version that was active and not pending. */
  fallbackVersion: number;
  servedOk: number;
  failures: number;
  /** Serving processes (daemon, `edgeq serve`) started while this version was pending. */
  starts: number;
  lastError: string | null;
  since: number;
}

export interface ModelSummary {
  name: string;
  versions: number;
  active: number | null;
  samples: number;
  createdAt: number;
}

/**
 * What a model's capture keeps. `rate` is the share of offered samples considered at all
 * (Bernoulli per sample); `maxSamples` and `maxBytes` bound the kept set, which stays a uniform
 * sample of everything considered (reservoir by priority sampling); `retentionMs` drops samples
 * older than that on pruneSamples() (0 keeps them forever).
 */
export interface CapturePolicy {
  enabled: boolean;
  rate: number;
  maxSamples: number;
  maxBytes: number;
  retentionMs: number;
}

/**
 * The policy of a model nobody configured: capture on, one request in ten considered, at most
 * 1000 samples and 256 MiB, samples older than 30 days pruned.
 */
export const DEFAULT_POLICY: Readonly<CapturePolicy> = Object.freeze({
  enabled: true,
  rate: 0.1,
  maxSamples: 1000,
  maxBytes: 256 * 1024 * 1024,
  retentionMs: 30 * 24 * 3600 * 1000,
});

/**
 * What happened to one offered sample:
 * - `kept`: stored (it may be evicted later by a sample with a larger key);
 * - `sampled-out`: not drawn by the policy's rate;
 * - `duplicate`: a sample with the same content is already stored for this model;
 * - `reservoir-full`: the reservoir is full and this sample's key is below every kept key that
 *   would have to make room for it (also: a sample larger than maxBytes, or maxSamples 0);
 * - `disabled`: the model's capture is off.
 */
export type OfferOutcome = 'kept' | 'sampled-out' | 'duplicate' | 'reservoir-full' | 'disabled' | 'store-full';

/**
 * Counters since the model was created, and the current kept set (`kept`, `bytes`).
 * Every valid offered sample is counted in `seen` and in exactly one outcome, so
 * seen = kept + evicted + pruned + duplicates + sampledOut + reservoirFull + disabled + storeFull.
 * `refused` counts samples of batches refused by validation (never stored, not in `seen`).
 */
export interface CaptureStats {
  seen: number;
  kept: number;
  bytes: number;
  duplicates: number;
  sampledOut: number;
  evicted: number;
  refused: number;
  reservoirFull: number;
  disabled: number;
  /** Refused because the store reached its size cap (StoreLimits.maxBytes). */
  storeFull: number;
  pruned: number;
}

export interface OfferedSample {
  tensors: SampleTensor[];
  source: string;
  label?: number;
  at?: number;
}

export type Split = 'calibration' | 'holdout';

export interface StoredSample {
  id: number;
  sha256: string;
  source: string;
  label: number | null;
  at: number;
  split: Split;
  tensors: SampleTensor[];
}

export type RunState = 'queued' | 'running' | 'succeeded' | 'failed' | 'interrupted' | 'cancelled';

export interface RunError {
  code: string;
  message: string;
}

export interface RunRow {
  id: string;
  kind: string;
  params: unknown;
  state: RunState;
  progress: number | null;
  result: unknown;
  error: RunError | null;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  ownerPid: number | null;
}

export type OutboxKind = 'telemetry' | 'reply' | 'report';

/** MQTT 5 properties an outbox message is published with. */
export interface OutboxProperties {
  /** Base64 of the correlation data bytes. */
  correlationData?: string;
}

export interface OutboxMessage {
  topic: string;
  payload: string;
  kind: OutboxKind;
  qos?: 0 | 1;
  properties?: OutboxProperties;
}

export interface OutboxRow {
  id: number;
  topic: string;
  payload: string;
  kind: string;
  qos: number;
  attempts: number;
  /** Only when the message has MQTT 5 properties. */
  properties?: OutboxProperties;
}

/** Where a command's replies go besides the device's reply topic (its MQTT 5 response topic). */
export interface ReplyTo {
  topic: string;
  /** Base64 of the correlation data bytes. */
  correlationData?: string;
}

export type JobState = 'queued' | 'running';

/** A command the daemon runs on its worker (one at a time, in queue order). */
export interface NewJob {
  cmdId: string;
  type: string;
  args: unknown;
  replyTo?: ReplyTo;
  /** ms since 1970: not started by then, it fails with E_EXPIRED. */
  expiresAt?: number;
}

export interface JobRow {
  pos: number;
  cmdId: string;
  type: string;
  args: unknown;
  state: JobState;
  replyTo: ReplyTo | null;
  expiresAt: number | null;
  runId: string | null;
  createdAt: number;
  startedAt: number | null;
}
