/**
 * quantize(): float32 ONNX model in, int8 QDQ model out — PyTorch's eager post-training static
 * quantization (fuse → prepare → calibrate → convert) done on an ONNX graph.
 */
import { accessSync, constants, statSync, unlinkSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { runCalibration, checkCalibrationFiles, inferTensorTypes, withExtraOutputs } from './calibrate.js';
import { EdgeqError, fsError } from './errors.js';
import { kernelCensus, type KernelCensus } from './inspect.js';
import { NpyFile } from './npy.js';
import { HistogramObserver } from './observe/histogram.js';
import { MinMaxObserver } from './observe/minmax.js';
import type { Observer } from './observe/observer.js';
import { onnxOpset } from './onnx/graph.js';
import { readModel, writeModel } from './onnx/model.js';
import { foldConstantNodes, foldInitializerIdentities } from './passes/constants.js';
import { foldBatchNorm } from './passes/fold-bn.js';
import type { CalibrationMethod, Profile } from './profiles.js';
import { emitQdq } from './qdq/emit.js';
import { candidateTensors, makePlan, type Skipped } from './qdq/plan.js';
import { openSession } from './runtime.js';

export { EdgeqError } from './errors.js';
export type { Profile, ProfileName, CalibrationMethod } from './profiles.js';
export { PROFILES, profileWith, isProfileName } from './profiles.js';

export interface QuantizeOptions {
  model: string;
  /** Calibration .npy per model input name; the key '' stands for a single-input model's input. */
  calib: Map<string, string>;
  out: string;
  profile: Profile;
  /** Defaults to the profile's method. */
  method?: CalibrationMethod;
  /** Use at most this many calibration samples. */
  calibCount?: number;
  /** Node names to keep in float. */
  exclude?: string[];
  threads?: number;
  batchSize?: number;
  onProgress?: (stage: 'calibrate', done: number, total: number) => void;
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
  timingsMs: { load: number; calibrate: number; convert: number; verify: number; total: number };
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

function fileSize(path: string): number {
  return statSync(path).size;
}

export async function quantize(opts: QuantizeOptions): Promise<QuantizeResult> {
  const t0 = performance.now();
  const warnings: string[] = [];
  const profile: Profile = { ...opts.profile };
  const method = opts.method ?? profile.method;
  checkWritable(opts.out, opts.model);

  // Load and prepare (PyTorch's fuse step): constants into initializers, BN into conv weights.
  const model = readModel(opts.model);
  const graph = model.graph!;
  const opset = onnxOpset(model);
  if (opset < 10) {
    throw new EdgeqError('E_MODEL_UNSUPPORTED', `${opts.model} uses ONNX opset ${opset}; QuantizeLinear needs opset 10 or later (convert it with onnx.version_converter)`);
  }
  if (profile.perChannel && opset < 13) {
    profile.perChannel = false;
    warnings.push(`opset ${opset} has no per-channel DequantizeLinear (needs 13): weights quantized per tensor`);
  }
  const exclude = new Set(opts.exclude ?? []);
  const nodeNames = new Set(graph.node.map((n) => n.name));
  const unknown = [...exclude].filter((x) => !nodeNames.has(x));
  if (unknown.length) {
    throw new EdgeqError('E_EXCLUDE_UNKNOWN', `--exclude names no node of the model: ${unknown.join(', ')}`);
  }
  const files = new Map<string, NpyFile>();
  try {
    for (const [name, path] of opts.calib) files.set(name, NpyFile.open(path));
    foldConstantNodes(graph);
    foldInitializerIdentities(graph);
    const folded = foldBatchNorm(graph);

    // Ask ORT the element type of every tensor that might be quantized.
    const candidates = candidateTensors(graph, { opset, exclude });
    const probeBytes = withExtraOutputs(model, candidates);
    const { types, inputs } = await inferTensorTypes(probeBytes);
    if (files.has('') ) {
      if (inputs.length !== 1) {
        throw new EdgeqError('E_CALIB_MISSING', `the model has ${inputs.length} inputs (${inputs.map((i) => i.name).join(', ')}): give --calib NAME=FILE.npy for each`);
      }
      files.set(inputs[0].name, files.get('')!);
      files.delete('');
    }
    const available = checkCalibrationFiles(inputs, files);
    const calibCount = Math.min(available, opts.calibCount ?? available);
    const floats = new Set([...types].filter(([, t]) => t === 'float32').map(([n]) => n));
    for (const i of inputs) if (i.type === 'float32') floats.add(i.name);
    const plan = makePlan(graph, floats, { opset, exclude });
    const tLoad = performance.now();

    // Calibrate (PyTorch's prepare + run): one observer per tensor, fed batch by batch.
    const observers = new Map<string, Observer>();
    for (const t of plan.observe) {
      observers.set(t, method === 'minmax' ? new MinMaxObserver() : new HistogramObserver({ bins: profile.bins, dtype: profile.activations }));
    }
    const ranges = await runCalibration(probeBytes, inputs, { files, count: calibCount }, {
      observers,
      batchSize: opts.batchSize ?? 16,
      threads: opts.threads,
      onProgress: (d, t) => opts.onProgress?.('calibrate', d, t),
    });
    const tCalib = performance.now();

    // Convert: emit the QDQ graph and write it.
    const totalNodes = graph.node.length;
    emitQdq(graph, plan, ranges, profile);
    model.producerName = 'edgeq';
    writeModel(model, opts.out);
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
    return {
      outPath: resolve(opts.out),
      profile: profile.name,
      method,
      perChannel: profile.perChannel,
      reduceRange: profile.reduceRange,
      calibCount,
      opset,
      sizeBytes: { fp32: fileSize(opts.model), int8: fileSize(opts.out) },
      nodes: { total: totalNodes, quantized: plan.nodes.size },
      foldedBatchNorms: folded.length,
      absorbedActivations: plan.absorptions.length,
      int8Ops: census.int8Ops,
      floatOps: census.floatOps,
      skipped: plan.skipped,
      warnings,
      timingsMs: {
        load: round(tLoad - t0),
        calibrate: round(tCalib - tLoad),
        convert: round(tConvert - tCalib),
        verify: round(tVerify - tConvert),
        total: round(tVerify - t0),
      },
    };
  } finally {
    for (const f of files.values()) f.close();
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
