/**
 * The MQTT wire contract between a device (`edgeq run`) and the fleet controller (`edgeq fleet`):
 * topics, message schemas and limits, in one place. Both sides validate every message they
 * receive against these schemas; fleet/ imports nothing of the agent but this folder.
 *
 * Topics (prefix default "edgeq/v1"):
 *   <prefix>/<deviceId>/status   device → fleet, retained: birth {online: true, …} / will {online: false}
 *   <prefix>/<deviceId>/cmd      fleet → device: {id, type, args}
 *   <prefix>/<deviceId>/reply    device → fleet: {cmdId, state, …}
 *   <prefix>/<deviceId>/report   device → fleet: the run report (report.ts)
 * QoS 1 everywhere. A command's MQTT 5 response topic and correlation data are honoured: the
 * replies go (also) to the response topic, carrying the same correlation data.
 */
import { z } from 'zod';
import { describeIssues, DeviceSchema, ReportSchema, type Parsed } from './report.js';

export const DEFAULT_PREFIX = 'edgeq/v1';
export const PROTOCOL_VERSION = 1;

/** Device ids and the prefix end up in topic names: no wildcards, no separators inside an id. */
export const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export const PREFIX = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

export type Channel = 'status' | 'cmd' | 'reply' | 'report';

export function topic(prefix: string, deviceId: string, channel: Channel): string {
  return `${prefix}/${deviceId}/${channel}`;
}

/** A subscription filter for one channel of every device (optionally as an MQTT 5 shared subscription). */
export function fleetFilter(prefix: string, channel: Channel, shareGroup?: string): string {
  const f = `${prefix}/+/${channel}`;
  return shareGroup ? `$share/${shareGroup}/${f}` : f;
}

/** The device id and channel of a topic under `prefix`, or undefined. */
export function parseTopic(prefix: string, t: string): { deviceId: string; channel: Channel } | undefined {
  if (!t.startsWith(`${prefix}/`)) return undefined;
  const rest = t.slice(prefix.length + 1).split('/');
  if (rest.length !== 2 || !DEVICE_ID.test(rest[0])) return undefined;
  const channel = rest[1];
  if (channel !== 'status' && channel !== 'cmd' && channel !== 'reply' && channel !== 'report') return undefined;
  return { deviceId: rest[0], channel };
}

/** Largest command payload a device accepts (bytes); larger ones are rejected unread. */
export const DEFAULT_MAX_COMMAND_BYTES = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// status

export const StatusSchema = z.looseObject({
  online: z.boolean(),
  deviceId: z.string().regex(DEVICE_ID),
  /**
   * Increases with every birth (persisted on the device). A will carries the seq of the birth it
   * belongs to, so a controller ignores a will older than the newest birth it has seen.
   */
  seq: z.number().int().nonnegative(),
  at: z.iso.datetime(),
  protocol: z.literal(PROTOCOL_VERSION),
  agentVersion: z.string().optional(),
  device: DeviceSchema.optional(),
  profile: z.looseObject({ name: z.string(), reason: z.string() }).optional(),
  /** Active model versions on the device: name → version and kind; pending: on probation (not yet confirmed by serving). */
  models: z.record(z.string(), z.looseObject({ version: z.number().int(), kind: z.string(), pending: z.boolean().optional() })).optional(),
  /** The job running now, if any. */
  job: z.looseObject({ cmdId: z.string(), type: z.string() }).nullable().optional(),
  queue: z.number().int().nonnegative().optional(),
  /**
   * The agent's process now: only in the reply to a `status` command (the retained birth is
   * republished on job changes only, so figures there would be stale). mallocTuned: started with
   * the systemd unit's glibc malloc settings (agent/daemon/malloc-env.ts).
   */
  process: z
    .looseObject({
      uptimeS: z.number().nonnegative(),
      rssBytes: z.number().int().nonnegative(),
      heapUsedBytes: z.number().int().nonnegative(),
      mallocTuned: z.boolean(),
    })
    .optional(),
});
export type Status = z.infer<typeof StatusSchema>;

// ---------------------------------------------------------------------------------------------
// commands

const modelName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'a model name: letters, digits, . _ -');
const quantizeArgs = {
  model: modelName,
  method: z.enum(['minmax', 'histogram', 'entropy', 'percentile', 'mse', 'auto']).optional(),
  profile: z.enum(['auto', 'fbgemm', 'qnnpack']).optional(),
  perChannel: z.boolean().optional(),
  reduceRange: z.boolean().optional(),
  percentile: z.number().gt(0).max(100).optional(),
  maxDrop: z.number().nonnegative().optional(),
  biasCorrection: z.boolean().optional(),
  calibCount: z.number().int().positive().optional(),
};

/** Arguments per command type; `args` may be omitted for types whose fields are all optional. */
export const COMMAND_ARGS = {
  status: z.strictObject({}),
  detect: z.strictObject({}),
  capture: z.strictObject({
    model: modelName,
    /** start / stop switch the policy's capture on or off; set changes the policy. */
    action: z.enum(['start', 'stop', 'set', 'stats']),
    rate: z.number().min(0).max(1).optional(),
    maxSamples: z.number().int().nonnegative().optional(),
    maxBytes: z.number().int().positive().optional(),
    retentionDays: z.number().nonnegative().optional(),
  }),
  import: z.strictObject({
    model: modelName,
    /** An .npy file path or an http(s) URL; must lie under one of the config's import.allow prefixes. */
    source: z.string().min(1).max(4096),
    labels: z.string().min(1).max(4096).optional(),
  }),
  optimize: z.strictObject({ ...quantizeArgs, runs: z.number().int().positive().max(10_000).optional(), benchThreads: z.number().int().positive().max(256).optional() }),
  quantize: z.strictObject(quantizeArgs),
  eval: z.strictObject({ model: modelName, version: z.number().int().positive().optional() }),
  bench: z.strictObject({ model: modelName, version: z.number().int().positive().optional(), runs: z.number().int().positive().max(10_000).optional(), threads: z.number().int().positive().max(256).optional() }),
  /** A deploy manifest {name, version, url, sha256, size, kind?, signature?}; deploy/manifest.ts checks its fields. */
  deploy: z.strictObject({ manifest: z.record(z.string(), z.unknown()) }),
  /** A version of a model: the store's number, or the manifest's release string. */
  activate: z.strictObject({ model: modelName, version: z.union([z.number().int().positive(), z.string().min(1).max(64)]) }),
  rollback: z.strictObject({ model: modelName }),
  cancel: z.strictObject({ cmdId: z.string().min(1).max(128) }),
  config: z.strictObject({
    /** Only these keys can be changed remotely. */
    set: z.strictObject({
      'quantize.method': z.enum(['minmax', 'histogram', 'entropy', 'percentile', 'mse', 'auto']).optional(),
      'quantize.maxDrop': z.number().nonnegative().optional(),
      'quantize.biasCorrection': z.boolean().optional(),
      threads: z.number().int().positive().max(256).optional(),
    }),
  }),
} as const;

export type CommandType = keyof typeof COMMAND_ARGS;
export const COMMAND_TYPES = Object.keys(COMMAND_ARGS) as CommandType[];
/** Commands answered at once, without queueing behind a running job. */
export const IMMEDIATE: ReadonlySet<CommandType> = new Set(['status', 'detect', 'capture', 'cancel', 'config']);

export const CommandSchema = z.strictObject({
  id: z.string().min(1).max(128).regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces'),
  type: z.string(),
  args: z.unknown().optional(),
});

export interface Command<T extends CommandType = CommandType> {
  id: string;
  type: T;
  args: z.infer<(typeof COMMAND_ARGS)[T]>;
}

/**
 * Parses a command payload: size, JSON, envelope, known type, arguments. On failure the error
 * says what is wrong and, when the id could be read, which command it was.
 */
export function parseCommand(payload: Uint8Array | string, maxBytes = DEFAULT_MAX_COMMAND_BYTES): { ok: true; value: Command } | { ok: false; code: string; error: string; id?: string } {
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.byteLength;
  if (size > maxBytes) return { ok: false, code: 'E_PAYLOAD_TOO_LARGE', error: `command payload is ${size} bytes; the limit is ${maxBytes}` };
  let value: unknown;
  try {
    value = JSON.parse(typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8'));
  } catch (e) {
    return { ok: false, code: 'E_BAD_JSON', error: `command is not JSON: ${(e as Error).message}` };
  }
  const id = value !== null && typeof value === 'object' && typeof (value as { id?: unknown }).id === 'string' ? ((value as { id: string }).id.slice(0, 128)) : undefined;
  const env = CommandSchema.safeParse(value);
  if (!env.success) return { ok: false, code: 'E_COMMAND_INVALID', error: describeIssues(env.error), id };
  const type = env.data.type;
  if (!(COMMAND_TYPES as string[]).includes(type)) {
    return { ok: false, code: 'E_COMMAND_UNKNOWN', error: `unknown command type ${JSON.stringify(type)} (known: ${COMMAND_TYPES.join(', ')})`, id };
  }
  const args = COMMAND_ARGS[type as CommandType].safeParse(env.data.args ?? {});
  if (!args.success) return { ok: false, code: 'E_COMMAND_INVALID', error: `${type}: ${describeIssues(args.error)}`, id };
  return { ok: true, value: { id: env.data.id, type: type as CommandType, args: args.data } as Command };
}

// ---------------------------------------------------------------------------------------------
// replies

export const REPLY_STATES = ['accepted', 'rejected', 'queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type ReplyState = (typeof REPLY_STATES)[number];
export const TERMINAL: ReadonlySet<ReplyState> = new Set(['rejected', 'succeeded', 'failed', 'cancelled']);

export const ReplySchema = z.looseObject({
  cmdId: z.string().min(1).max(128),
  deviceId: z.string().regex(DEVICE_ID),
  type: z.string().optional(),
  state: z.enum(REPLY_STATES),
  /** 0..1 while running. */
  progress: z.number().min(0).max(1).optional(),
  /** What the stage is doing, for people watching. */
  stage: z.string().optional(),
  result: z.unknown().optional(),
  error: z.strictObject({ code: z.string(), message: z.string() }).optional(),
  at: z.iso.datetime(),
});
export type Reply = z.infer<typeof ReplySchema>;

function parseWith<T>(schema: z.ZodType<T>, payload: Uint8Array | string): Parsed<T> {
  let value: unknown;
  try {
    value = JSON.parse(typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8'));
  } catch (e) {
    return { ok: false, error: `not JSON: ${(e as Error).message}` };
  }
  const r = schema.safeParse(value);
  return r.success ? { ok: true, value: r.data } : { ok: false, error: describeIssues(r.error) };
}

export const parseStatus = (p: Uint8Array | string): Parsed<Status> => parseWith(StatusSchema, p);
export const parseReply = (p: Uint8Array | string): Parsed<Reply> => parseWith(ReplySchema, p);
export const parseReportPayload = (p: Uint8Array | string): Parsed<z.infer<typeof ReportSchema>> => parseWith(ReportSchema, p);
