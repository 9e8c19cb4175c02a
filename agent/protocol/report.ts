/**
 * The run report: one fp32-vs-int8 comparison on one device. `edgeq optimize` writes it,
 * `edgeq report` renders it, and the daemon sends the same object on the MQTT `report` topic, so
 * this schema is part of the wire contract (docs/report.md describes every field).
 *
 * Versioning: `schema` names the major version. Adding an optional field keeps v1; removing or
 * changing the meaning of a field makes v2, and readers refuse a version they do not know
 * rather than misreading it. Unknown extra fields are kept (a newer agent's additions pass
 * through an older controller).
 */
import { z } from 'zod';

export const REPORT_SCHEMA = 'edgeq.report/v1';

const ms = z.number().nonnegative();
const share = z.number().min(0).max(1);
/** SQNR is +Infinity for identical outputs; JSON has no Infinity, so it travels as null. */
const db = z.number().nullable();
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'a sha256 is 64 lowercase hex digits');

export const ModelFileSchema = z.looseObject({
  name: z.string().min(1),
  sha256,
  sizeBytes: z.number().int().positive(),
});

/** Facts about a device, as the report and the status message carry them. */
export const DeviceSchema = z.looseObject({
  hostname: z.string(),
  arch: z.string(),
  cpu: z.string(),
  cores: z.number().int().nonnegative(),
  isa: z.array(z.string()),
  os: z.string(),
  node: z.string(),
  onnxruntime: z.string(),
});

export const LatencySchema = z.looseObject({
  p50Ms: ms,
  p90Ms: ms,
  p99Ms: ms,
  meanMs: ms,
  minMs: ms,
  throughput: z.number().nonnegative(),
  loadMs: ms,
  runs: z.number().int().positive(),
  /** Peak resident memory of the process that ran the measurement (a child of the agent). */
  peakRssBytes: z.number().int().nonnegative(),
});

export const PromotionSchema = z.looseObject({
  promoted: z.boolean(),
  checks: z.array(z.looseObject({ check: z.enum(['accuracy', 'latency']), ok: z.boolean(), detail: z.string() })),
  budget: z.looseObject({ maxDropPoints: z.number(), minSpeedup: z.number() }),
  /** The model's active version after the decision. */
  activeVersion: z.number().int().positive(),
});

export const ReportSchema = z.looseObject({
  schema: z.literal(REPORT_SCHEMA),
  id: z.string().min(1),
  createdAt: z.iso.datetime(),
  agent: z.looseObject({ name: z.literal('edgeq'), version: z.string() }),
  device: DeviceSchema.extend({ id: z.string().optional() }),
  model: ModelFileSchema,
  int8: ModelFileSchema,
  quantization: z.looseObject({
    profile: z.string(),
    perChannel: z.boolean(),
    reduceRange: z.boolean(),
    activations: z.enum(['uint8', 'int8']),
    method: z.string(),
    /** Why this profile: the CPU features that decided it. */
    reason: z.string(),
    calibrationSamples: z.number().int().nonnegative(),
    /** Held-out calibration samples auto / the accuracy budget scored candidates on. */
    heldOutSamples: z.number().int().nonnegative().optional(),
    biasCorrection: z.boolean(),
    int8Ops: z.record(z.string(), z.number().int()),
    floatOps: z.record(z.string(), z.number().int()),
    /** Ops put back to float to meet the accuracy budget. */
    keptFloat: z.array(z.string()),
  }),
  accuracy: z.looseObject({
    /** Where the figures come from: the evaluation data, or the calibration data when none was given. */
    source: z.enum(['eval-data', 'calibration-data']),
    samples: z.number().int().positive(),
    fp32Top1: share.optional(),
    int8Top1: share.optional(),
    /** fp32Top1 - int8Top1, in points (percent). */
    dropPoints: z.number().optional(),
    agreement: share.optional(),
    sqnrDb: db,
    cosine: z.number().min(-1).max(1),
  }),
  latency: z.looseObject({
    threads: z.number().int().positive(),
    batch: z.number().int().positive(),
    fp32: LatencySchema,
    int8: LatencySchema,
    /** fp32 p50 / int8 p50: above 1 means int8 is faster. */
    speedup: z.number().positive(),
  }),
  sizeRatio: z.number().positive(),
  /** The promotion gate's decision, when the run could activate the int8 model. */
  promotion: PromotionSchema.optional(),
  timingsMs: z.looseObject({ quantize: ms, eval: ms, bench: ms, total: ms }),
});

export type Report = z.infer<typeof ReportSchema>;
export type ModelFile = z.infer<typeof ModelFileSchema>;
export type Promotion = z.infer<typeof PromotionSchema>;
export type LatencyFigures = z.infer<typeof LatencySchema>;

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

/** One line naming the first problems, e.g. "latency.int8.p50Ms: expected number, received string". */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((i) => `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`)
    .join('; ');
}

export function parseReport(value: unknown): Parsed<Report> {
  if (value !== null && typeof value === 'object' && 'schema' in value && (value as { schema: unknown }).schema !== REPORT_SCHEMA) {
    return { ok: false, error: `schema ${JSON.stringify((value as { schema: unknown }).schema)} is not one this agent reads (${REPORT_SCHEMA})` };
  }
  const r = ReportSchema.safeParse(value);
  return r.success ? { ok: true, value: r.data } : { ok: false, error: describeIssues(r.error) };
}

/** The JSON Schema of the report, for third-party consumers (`edgeq report --schema`). */
export function reportJsonSchema(): unknown {
  return z.toJSONSchema(ReportSchema, { io: 'input' });
}
