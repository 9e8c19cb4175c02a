/**
 * The main job on one device: quantize, evaluate fp32 against int8, benchmark both, and build the
 * run report (agent/protocol/report.ts). `edgeq optimize` runs it from the command line; the
 * daemon runs it for the fleet's `optimize` command.
 */
import { randomUUID } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { benchInChild, type BenchResult } from '../quant/bench-process.js';
import { evaluate } from '../quant/evaluate.js';
import { sha256File } from '../quant/hash.js';
import { quantize, type QuantizeOptions, type QuantizeResult } from '../quant/index.js';
import { isEdgeqError } from '../quant/errors.js';
import { deviceFacts } from './device.js';
import { storeData, type StoreData } from './from-store.js';
import { DEFAULT_KEEP_VERSIONS, pruneModel } from './deploy.js';
import { registerModel } from './models.js';
import { promotionDecision, type GateBudget } from './promotion.js';
import type { Store } from './store/index.js';
import { localCpuAsync } from './detect.js';
import { REPORT_SCHEMA, type LatencyFigures, type Report } from './protocol/report.js';
import { AGENT_VERSION } from './version.js';

export interface OptimizeOptions {
  quantize: QuantizeOptions;
  /** Why this profile (from detection, or the flag/config that set it). */
  reason: string;
  /** Evaluation samples per input ('' for the only input); the calibration data when absent. */
  data?: Map<string, string>;
  /** Labels of the evaluation samples. */
  labels?: string;
  /** Threads and runs of the latency measurement. */
  benchThreads?: number;
  runs?: number;
  warmup?: number;
  deviceId?: string;
  onStage?: (stage: 'quantize' | 'eval' | 'bench', done: number, total: number) => void;
}

export interface OptimizeOutcome {
  report: Report;
  quantize: QuantizeResult;
}

function latency(b: BenchResult): LatencyFigures {
  return { p50Ms: b.p50Ms, p90Ms: b.p90Ms, p99Ms: b.p99Ms, meanMs: b.meanMs, minMs: b.minMs, throughput: b.throughput, loadMs: b.loadMs, runs: b.runs, peakRssBytes: b.peakRssBytes };
}

const finite = (x: number): number | null => (Number.isFinite(x) ? x : null);

export async function optimize(opts: OptimizeOptions): Promise<OptimizeOutcome> {
  const t0 = performance.now();
  const cpu = localCpuAsync();
  const q = opts.quantize;
  const qr = await quantize({ ...q, onProgress: (stage, d, t) => (stage === 'calibrate' ? opts.onStage?.('quantize', d, t) : undefined) });
  const tQuant = performance.now();

  const evalData = opts.data ?? q.calib;
  const ev = await evaluate({
    model: q.model,
    compare: qr.outPath,
    data: evalData,
    labels: opts.data ? opts.labels : undefined,
    threads: q.threads,
    onProgress: (d, t) => opts.onStage?.('eval', d, t),
  });
  const tEval = performance.now();

  // One model at a time, each in its own process, fed with a real sample.
  const bench = { threads: opts.benchThreads ?? 1, runs: opts.runs ?? 100, warmup: opts.warmup ?? 10, data: evalData };
  opts.onStage?.('bench', 0, 2);
  const b32 = await benchInChild({ model: q.model, ...bench });
  opts.onStage?.('bench', 1, 2);
  const b8 = await benchInChild({ model: qr.outPath, ...bench });
  opts.onStage?.('bench', 2, 2);
  const tBench = performance.now();

  const [sha32, sha8] = await Promise.all([sha256File(q.model), sha256File(qr.outPath)]);
  const out = ev.outputs?.[0];
  const top1 = ev.model.top1;
  const top1q = ev.compare?.top1;
  const report: Report = {
    schema: REPORT_SCHEMA,
    id: randomUUID(),
    createdAt: new Date().toISOString(),
    agent: { name: 'edgeq', version: AGENT_VERSION },
    device: deviceFacts(await cpu, opts.deviceId),
    model: { name: basename(q.model), sha256: sha32, sizeBytes: b32.sizeBytes },
    int8: { name: basename(qr.outPath), sha256: sha8, sizeBytes: b8.sizeBytes },
    quantization: {
      profile: qr.profile,
      perChannel: qr.perChannel,
      reduceRange: qr.reduceRange,
      activations: q.profile.activations,
      method: qr.method,
      reason: opts.reason,
      calibrationSamples: qr.calibCount,
      ...(qr.heldOut ? { heldOutSamples: qr.heldOut.samples } : {}),
      biasCorrection: Boolean(qr.biasCorrection?.length),
      int8Ops: qr.int8Ops,
      floatOps: qr.floatOps,
      keptFloat: (qr.fallback ?? []).map((f) => f.node),
    },
    accuracy: {
      source: opts.data ? 'eval-data' : 'calibration-data',
      samples: ev.samples,
      ...(top1 !== undefined ? { fp32Top1: top1 } : {}),
      ...(top1q !== undefined ? { int8Top1: top1q } : {}),
      ...(top1 !== undefined && top1q !== undefined ? { dropPoints: Math.round((top1 - top1q) * 1e4) / 100 } : {}),
      ...(ev.agreement !== undefined ? { agreement: ev.agreement } : {}),
      sqnrDb: out ? finite(out.sqnrDb) : null,
      cosine: out ? out.cosine : 1,
    },
    latency: {
      threads: bench.threads,
      batch: b32.batch,
      fp32: latency(b32),
      int8: latency(b8),
      speedup: Math.round((b32.p50Ms / b8.p50Ms) * 1000) / 1000,
    },
    sizeRatio: Math.round((b8.sizeBytes / b32.sizeBytes) * 10000) / 10000,
    timingsMs: {
      quantize: Math.round(tQuant - t0),
      eval: Math.round(tEval - tQuant),
      bench: Math.round(tBench - tEval),
      total: Math.round(performance.now() - t0),
    },
  };
  return { report, quantize: qr };
}

export interface StoreOptimizeOptions extends Omit<OptimizeOptions, 'quantize' | 'data' | 'labels'> {
  /** quantize() options but for model, calibration data and output, which come from the store. */
  quantize: Omit<QuantizeOptions, 'model' | 'calib' | 'out'>;
  /** Called with the run id as soon as the run row exists. */
  onRun?: (runId: string) => void;
  /** Put the int8 model through the promotion gate and activate it if it passes. Default true. */
  promote?: boolean;
  budget?: GateBudget;
  /** Versions of the model kept afterwards (config deploy.keepVersions; default DEFAULT_KEEP_VERSIONS). */
  keepVersions?: number;
}

/**
 * The main job on a registered model: calibrate on the calibration split of its captured
 * samples, evaluate on the held-out split (with their labels when all have one), bench both,
 * register the int8 model as the next version, activate it if the promotion gate passes it
 * (agent/promotion.ts; otherwise the fp32 version stays active), and record the run
 * (parameters, progress, report with the gate's decision, or error) in the store.
 */
export async function optimizeFromStore(store: Store, stateDir: string, name: string, opts: StoreOptimizeOptions): Promise<OptimizeOutcome & { runId: string; int8Version: number }> {
  const { onProgress: _p, ...params } = opts.quantize;
  const run = store.createRun('optimize', { model: name, quantize: { ...params, profile: params.profile.name }, benchThreads: opts.benchThreads, runs: opts.runs });
  opts.onRun?.(run.id);
  store.startRun(run.id);
  const hasHoldout = store.hasModel(name) && store.countSamples(name, 'holdout') > 0;
  let data: StoreData | undefined;
  try {
    data = storeData(store, name, { calibration: true, holdout: hasHoldout });
    const calib = data.calibration!;
    const out = join(dirname(calib.files.values().next().value!), `${name}.int8.onnx`);
    const stages = { quantize: 0, eval: 1, bench: 2 } as const;
    const outcome = await optimize({
      ...opts,
      quantize: { ...opts.quantize, model: data.fp32.path, calib: calib.files, out, labels: opts.quantize.labels ?? calib.labels },
      data: data.holdout?.files,
      labels: data.holdout?.labels,
      onStage: (stage, done, total) => {
        opts.onStage?.(stage, done, total);
        store.setProgress(run.id, Math.min(1, (stages[stage] + (total ? done / total : 0)) / 3));
      },
    });
    const v = await registerModel(store, stateDir, name, out, 'int8', data.fp32.version);
    outcome.report.int8.name = `${name}@v${v.version}`;
    outcome.report.model.name = `${name}@v${data.fp32.version}`;
    if (opts.promote !== false) {
      const decision = promotionDecision(outcome.report, opts.budget);
      if (decision.promoted) store.setActive(name, v.version);
      outcome.report.promotion = { ...decision, activeVersion: store.activeVersion(name)!.version };
    }
    store.finishRun(run.id, outcome.report);
    // Each optimize adds a version: without this a daemon optimizing every hour fills the disk.
    pruneModel(store, stateDir, name, opts.keepVersions ?? DEFAULT_KEEP_VERSIONS);
    return { ...outcome, runId: run.id, int8Version: v.version };
  } catch (e) {
    const code = isEdgeqError(e) ? e.code : 'E_INTERNAL';
    store.failRun(run.id, { code, message: e instanceof Error ? e.message : String(e) }, code === 'E_CANCELLED' ? 'cancelled' : 'failed');
    throw e;
  } finally {
    data?.cleanup();
  }
}
