/**
 * quantize(): float32 ONNX model in, int8 QDQ model out — PyTorch's eager post-training static
 * quantization (fuse → prepare → calibrate → convert) done on an ONNX graph, with an automatic
 * mode that tries methods and granularities on held-out samples and an accuracy budget that
 * puts the most sensitive ops back to float.
 */
import { accessSync, constants, statSync, unlinkSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { correctBiases, type BiasCorrection } from './bias-correction.js';
import { readLabels } from './data.js';
import { EdgeqError, fsError } from './errors.js';
import { kernelCensus, type KernelCensus } from './inspect.js';
import { METHODS, checkPercentile, type CalibrationMethod } from './observe/range-search.js';
import { encodeModel, writeModel } from './onnx/model.js';
import {
  calibrate, checkExclusions, closePrepared, convert, planOn, prepareModel, rangesFor, reference, score, tensorSqnr,
  type Converted, type PreparedModel, type Reference, type Score,
} from './pipeline.js';
import type { Profile } from './profiles.js';
import type { Skipped } from './qdq/plan.js';
import { openSession } from './runtime.js';

export { EdgeqError } from './errors.js';
export type { Profile, ProfileName } from './profiles.js';
export { PROFILES, profileWith, isProfileName } from './profiles.js';
export { METHODS, type CalibrationMethod } from './observe/range-search.js';

export interface QuantizeOptions {
  model: string;
  /** Calibration .npy per model input name; the key '' stands for a single-input model's input. */
  calib: Map<string, string>;
  out: string;
  profile: Profile;
  /** A calibration method, or 'auto' to try them all on held-out samples. Defaults to the profile's. */
  method?: CalibrationMethod | 'auto';
  /** For the percentile method: in (0, 100], default 99.999. */
  percentile?: number;
  /** Use at most this many calibration samples. */
  calibCount?: number;
  /** Node names to keep in float. */
  exclude?: string[];
  /** Labels (.npy, one class index per calibration sample) for scoring by accuracy instead of agreement. */
  labels?: string;
  /** Accuracy budget in points of top-1 (against labels if given, else agreement with fp32). */
  maxDrop?: number;
  /** Correct each Conv/Gemm channel's bias for the mean error weight quantization causes. */
  biasCorrection?: boolean;
  threads?: number;
  batchSize?: number;
  onProgress?: (stage: 'calibrate' | 'search', done: number, total: number) => void;
}

export interface CandidateRow {
  method: CalibrationMethod;
  perChannel: boolean;
  agreement: number;
  sqnrDb: number;
  accuracy?: number;
  ms: number;
}

export interface QuantizeResult {
  outPath: string;
  profile: string;
  method: CalibrationMethod;
  perChannel: boolean;
  reduceRange: boolean;
  calibCount: number;
  opset: number;
  sizeBytes: { fp32: number; int8: number };
  nodes: { total: number; quantized: number };
  foldedBatchNorms: number;
  absorbedActivations: number;
  int8Ops: Record<string, number>;
  floatOps: Record<string, number>;
  skipped: Skipped[];
  warnings: string[];
  /** Held-out evaluation, when auto or an accuracy budget asked for one. */
  heldOut?: { samples: number; metric: 'top1' | 'agreement'; fp32?: number; int8: Score; dropPoints: number };
  /** Every combination auto tried, best first. */
  candidates?: CandidateRow[];
  /** Bias correction applied, per Conv/Gemm. */
  biasCorrection?: BiasCorrection[];
  /** Ops put back to float to meet the accuracy budget, most sensitive first. */
  fallback?: Array<{ node: string; opType: string; sqnrDb: number; lossDb: number }>;
  timingsMs: { load: number; calibrate: number; convert: number; search?: number; verify: number; total: number };
}

function checkWritable(out: string, model: string): void {
  const full = resolve(out);
  if (full === resolve(model)) throw new EdgeqError('E_ARGUMENT', `--out ${out} is the input model; write the int8 model to another file`);
  try {
    if (statSync(full).isDirectory()) throw new EdgeqError('E_OUTPUT_UNWRITABLE', `cannot write ${out}: it is a directory`);
  } catch (e) {
    if (e instanceof EdgeqError) throw e;
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw fsError(e, out, true);
  }
  try {
    accessSync(dirname(full), constants.W_OK);
  } catch (e) {
    throw fsError(e, out, true);
  }
}

function checkOptions(opts: QuantizeOptions): void {
  const m = opts.method;
  if (m !== undefined && m !== 'auto' && !(METHODS as readonly string[]).includes(m)) {
    throw new EdgeqError('E_ARGUMENT', `unknown calibration method "${m}" (use ${METHODS.join(', ')} or auto)`);
  }
  if (opts.percentile !== undefined) {
    try {
      checkPercentile(opts.percentile, '--percentile');
    } catch (e) {
      throw new EdgeqError('E_ARGUMENT', (e as Error).message);
    }
  }
  if (opts.maxDrop !== undefined && !(opts.maxDrop >= 0)) throw new EdgeqError('E_ARGUMENT', `--max-drop must be 0 or more points, got ${opts.maxDrop}`);
}

/** Points of top-1 lost: against labels when there are, else disagreement with fp32. */
function dropPoints(ref: Reference, s: Score): number {
  if (ref.accuracy !== undefined && s.accuracy !== undefined) return Math.round((ref.accuracy - s.accuracy) * 1e4) / 100;
  return Math.round((1 - s.agreement) * 1e4) / 100;
}

function better(a: Score, b: Score): boolean {
  const ma = a.accuracy ?? a.agreement, mb = b.accuracy ?? b.agreement;
  return ma !== mb ? ma > mb : a.sqnrDb > b.sqnrDb;
}

export async function quantize(opts: QuantizeOptions): Promise<QuantizeResult> {
  const t0 = performance.now();
  checkOptions(opts);
  const warnings: string[] = [];
  const profile: Profile = { ...opts.profile };
  checkWritable(opts.out, opts.model);
  const p = await prepareModel(opts.model, opts.calib);
  try {
    if (profile.perChannel && p.opset < 13) {
      profile.perChannel = false;
      warnings.push(`opset ${p.opset} has no per-channel DequantizeLinear (needs 13): weights quantized per tensor`);
    }
    const exclude = new Set(opts.exclude ?? []);
    checkExclusions(p, exclude);
    const requested = opts.method ?? profile.method;
    const scoring = requested === 'auto' || opts.maxDrop !== undefined;
    const usable = Math.min(p.samples, opts.calibCount ?? p.samples);
    // Auto and the accuracy budget judge candidates on samples calibration has not seen.
    const holdout = scoring ? Math.min(200, Math.max(8, Math.round(usable * 0.2))) : 0;
    const calibCount = usable - holdout;
    if (scoring && calibCount < 8) {
      throw new EdgeqError('E_CALIB_EMPTY', `auto and --max-drop hold out ${holdout} of the calibration samples for scoring and need at least 16 in all; ${usable} given`);
    }
    const tLoad = performance.now();

    const base = planOn(p, p.model, exclude);
    const observers = await calibrate(p, base.observe, {
      count: calibCount,
      collect: requested === 'minmax' ? 'minmax' : 'histogram',
      bins: profile.bins,
      activations: profile.activations,
      batchSize: opts.batchSize,
      threads: opts.threads,
      onProgress: (d, t) => opts.onProgress?.('calibrate', d, t),
    });
    const tCalib = performance.now();

    let chosen: { method: CalibrationMethod; profile: Profile; conv: Converted };
    let candidates: CandidateRow[] | undefined;
    let heldOut: QuantizeResult['heldOut'];
    // fp32 outputs on the held-out samples, computed once for scoring every candidate.
    let ref: Reference | undefined;
    let fallback: QuantizeResult['fallback'];
    let tSearch = tCalib;
    // Ranges depend on the method only, not on weight granularity: decide each method once.
    const rangeCache = new Map<CalibrationMethod, ReturnType<typeof rangesFor>>();
    const rangesOf = (method: CalibrationMethod, prof: Profile) => {
      let r = rangeCache.get(method);
      if (!r) rangeCache.set(method, (r = rangesFor(observers, method, prof, opts.percentile)));
      return r;
    };
    const make = (method: CalibrationMethod, prof: Profile, ex: Set<string>) => convert(p, rangesOf(method, prof), prof, ex);

    if (!scoring) {
      chosen = { method: requested as CalibrationMethod, profile, conv: make(requested as CalibrationMethod, profile, exclude) };
    } else {
      const labels = opts.labels ? readLabels(opts.labels, usable, 'calibration samples') : undefined;
      ref = await reference(p, calibCount, holdout, labels, opts.threads);
      const combos: Array<{ method: CalibrationMethod; prof: Profile }> = [];
      const methods = requested === 'auto' ? METHODS : [requested];
      const grains = requested === 'auto' && p.opset >= 13 ? [true, false] : [profile.perChannel];
      for (const m of methods) for (const pc of grains) combos.push({ method: m, prof: { ...profile, perChannel: pc } });
      candidates = [];
      let best: { method: CalibrationMethod; prof: Profile; conv: Converted; score: Score } | undefined;
      for (const [i, c] of combos.entries()) {
        const t = performance.now();
        const conv = make(c.method, c.prof, exclude);
        const s = await score(p, ref, encodeModel(conv.model), opts.threads);
        candidates.push({ method: c.method, perChannel: c.prof.perChannel, agreement: s.agreement, sqnrDb: round(s.sqnrDb), accuracy: s.accuracy, ms: round(performance.now() - t) });
        if (!best || better(s, best.score)) best = { ...c, conv, score: s };
        opts.onProgress?.('search', i + 1, combos.length);
      }
      candidates.sort((a, b) => (b.accuracy ?? b.agreement) - (a.accuracy ?? a.agreement) || b.sqnrDb - a.sqnrDb);
      let current = best!;
      let drop = dropPoints(ref, current.score);
      if (opts.maxDrop !== undefined && drop > opts.maxDrop) {
        // Sensitivity of an op: how much SQNR its output loses against its worst activation input
        // (float vs int8, streamed over the held-out samples). Raw output SQNR would blame every op
        // downstream of the real culprit; the loss across the op points at the culprit itself.
        const computeOps = [...current.conv.plan.nodes].filter(([, r]) => r.output !== 'shareInput');
        const original = originalNameOf(current.conv);
        const inputsOf = new Map(computeOps.map(([n, r]) => [n, r.activations(n).filter((i) => n.input[i]).map((i) => original(n.input[i]))]));
        const tensors = new Set<string>();
        for (const [n] of computeOps) [original(n.output[0]), ...inputsOf.get(n)!].forEach((t) => tensors.add(t));
        const sqnr = await tensorSqnr(p, current.conv, ref, [...tensors], opts.threads);
        const ranked = computeOps
          .map(([n]) => {
            const out = sqnr.get(original(n.output[0])) ?? Infinity;
            const ins = inputsOf.get(n)!.map((t) => sqnr.get(t) ?? Infinity);
            const inWorst = ins.length ? Math.min(...ins) : Infinity;
            return { node: n.name, opType: n.opType, sqnrDb: round(out), lossDb: Number.isFinite(inWorst) ? round(inWorst - out) : round(-out) };
          })
          .filter((r) => Number.isFinite(r.sqnrDb))
          .sort((a, b) => b.lossDb - a.lossDb);
        const limit = Math.max(1, Math.ceil(computeOps.length / 2));
        const ex = new Set(exclude);
        fallback = [];
        for (const r of ranked.slice(0, limit)) {
          ex.add(r.node);
          fallback.push({ node: r.node, opType: r.opType, sqnrDb: r.sqnrDb, lossDb: r.lossDb });
          const conv = make(current.method, current.prof, ex);
          const s = await score(p, ref, encodeModel(conv.model), opts.threads);
          current = { ...current, conv, score: s };
          drop = dropPoints(ref, s);
          if (drop <= opts.maxDrop) break;
        }
        if (drop > opts.maxDrop) {
          throw new EdgeqError(
            'E_ACCURACY_BUDGET',
            `cannot keep the top-1 drop within ${opts.maxDrop} points: still ${drop} points after putting ${fallback.length} of ${computeOps.length} ops back to float (${fallback.map((f) => f.node).join(', ')}); no model written`,
          );
        }
      }
      chosen = { method: current.method, profile: current.prof, conv: current.conv };
      heldOut = { samples: holdout, metric: ref.accuracy !== undefined ? 'top1' : 'agreement', fp32: ref.accuracy, int8: current.score, dropPoints: drop };
      tSearch = performance.now();
    }

    let corrections: BiasCorrection[] | undefined;
    if (opts.biasCorrection) {
      const measured = await correctBiases(p, chosen.conv.plan, chosen.profile, { start: 0, count: Math.min(calibCount, 128) }, opts.threads);
      corrections = measured.corrections;
      const excluded = new Set([...exclude, ...(fallback ?? []).map((f) => f.node)]);
      chosen = { ...chosen, conv: convert(measured.prepared, rangesFor(observers, chosen.method, chosen.profile, opts.percentile), chosen.profile, excluded) };
      if (heldOut && ref) {
        const s = await score(p, ref, encodeModel(chosen.conv.model), opts.threads);
        heldOut = { ...heldOut, int8: s, dropPoints: dropPoints(ref, s) };
      }
    }
    writeModel(chosen.conv.model, opts.out);
    const tConvert = performance.now();

    // Verify: ORT must load it unoptimized and optimized, and the census says what runs in int8.
    let census: KernelCensus;
    try {
      const s = await openSession(opts.out, { threads: 1, optimization: 'disabled' });
      await s.release();
      census = await kernelCensus(opts.out, 1);
    } catch (e) {
      try { unlinkSync(opts.out); } catch { /* already gone */ }
      throw new EdgeqError('E_RUNTIME', `the int8 model failed to load in ONNX Runtime and was removed: ${(e as Error).message}`, { cause: e });
    }
    const tVerify = performance.now();
    const plan = chosen.conv.plan;
    return {
      outPath: resolve(opts.out),
      profile: chosen.profile.name,
      method: chosen.method,
      perChannel: chosen.profile.perChannel,
      reduceRange: chosen.profile.reduceRange,
      calibCount,
      opset: p.opset,
      sizeBytes: { fp32: statSync(opts.model).size, int8: statSync(opts.out).size },
      nodes: { total: p.model.graph!.node.length, quantized: plan.nodes.size },
      foldedBatchNorms: p.foldedBatchNorms,
      absorbedActivations: plan.absorptions.length,
      int8Ops: census.int8Ops,
      floatOps: census.floatOps,
      skipped: plan.skipped,
      warnings,
      ...(heldOut ? { heldOut } : {}),
      ...(candidates ? { candidates } : {}),
      ...(fallback ? { fallback } : {}),
      ...(corrections ? { biasCorrection: corrections } : {}),
      timingsMs: {
        load: round(tLoad - t0),
        calibrate: round(tCalib - tLoad),
        ...(scoring ? { search: round(tSearch - tCalib) } : {}),
        convert: round(tConvert - tSearch),
        verify: round(tVerify - tConvert),
        total: round(tVerify - t0),
      },
    };
  } finally {
    closePrepared(p);
  }
}

/**
 * The emitter renames activation inputs to DQ outputs (and a quantized graph output's producer
 * to a fresh name); this maps such names back to the tensor names of the float model.
 */
function originalNameOf(conv: Converted): (name: string) => string {
  const back = new Map<string, string>(conv.renamedOutputs);
  for (const [orig, dq] of conv.dequantized) back.set(dq, orig);
  return (name) => back.get(name) ?? name;
}

function round(x: number): number {
  return Math.round(x * 10) / 10;
}

export type { PreparedModel };
