/**
 * The stages of post-training quantization as separate steps, so one calibration can serve many
 * conversions (auto mode tries several methods and granularities on the same statistics):
 * prepare (load, fold) → calibrate (observers) → convert (ranges → QDQ graph) → score (held-out).
 */
import { clone } from '@bufbuild/protobuf';
import { ModelProtoSchema, type ModelProto } from 'onnx-buf';
import { inferTensorTypes, runCalibration, withExtraOutputs } from './calibrate.js';
import { bindDataFiles } from './data.js';
import { EdgeqError } from './errors.js';
import { accuracy, agreement, argmaxRows } from './eval.js';
import { forEachBatch, planBatches, type InputInfo } from './feed.js';
import { NpyFile } from './npy.js';
import { HistogramObserver } from './observe/histogram.js';
import { MinMaxObserver } from './observe/minmax.js';
import type { Observer, Range } from './observe/observer.js';
import { decideRange, type CalibrationMethod } from './observe/range-search.js';
import { onnxOpset } from './onnx/graph.js';
import { encodeModel, readModel } from './onnx/model.js';
import { foldConstantNodes, foldInitializerIdentities } from './passes/constants.js';
import { foldBatchNorm } from './passes/fold-bn.js';
import type { Profile } from './profiles.js';
import { emitQdq } from './qdq/emit.js';
import { candidateTensors, makePlan, type Plan } from './qdq/plan.js';
import { openSession, ort } from './runtime.js';

export interface PreparedModel {
  modelPath: string;
  /** The fp32 model after folding: semantically the input model. Never mutated after prepare. */
  model: ModelProto;
  /** The same model with every tensor that may be quantized added as an output. */
  probeBytes: Uint8Array;
  inputs: InputInfo[];
  /** Calibration data, keyed by model input name. Close with closePrepared(). */
  files: Map<string, NpyFile>;
  samples: number;
  floats: Set<string>;
  opset: number;
  foldedBatchNorms: number;
  /** Node names, for validating exclusions. */
  nodeNames: Set<string>;
}

/** Loads, folds and type-checks the model and opens the calibration files. */
export async function prepareModel(modelPath: string, calib: Map<string, string>): Promise<PreparedModel> {
  const model = readModel(modelPath);
  const graph = model.graph!;
  const opset = onnxOpset(model);
  if (opset < 10) {
    throw new EdgeqError('E_MODEL_UNSUPPORTED', `${modelPath} uses ONNX opset ${opset}; QuantizeLinear needs opset 10 or later (convert it with onnx.version_converter)`);
  }
  // Every node gets a name: exclusions and sensitivity reports refer to nodes by name.
  graph.node.forEach((n, i) => {
    if (!n.name) n.name = `${n.opType}_${i}`;
  });
  const nodeNames = new Set(graph.node.map((n) => n.name));
  const files = new Map<string, NpyFile>();
  try {
    for (const [name, path] of calib) files.set(name, NpyFile.open(path));
    foldConstantNodes(graph);
    foldInitializerIdentities(graph);
    const folded = foldBatchNorm(graph);
    const probeBytes = withExtraOutputs(model, candidateTensors(graph));
    const { types, inputs } = await inferTensorTypes(probeBytes);
    const samples = bindDataFiles(inputs, files);
    const floats = new Set([...types].filter(([, t]) => t === 'float32').map(([n]) => n));
    for (const i of inputs) if (i.type === 'float32') floats.add(i.name);
    return { modelPath, model, probeBytes, inputs, files, samples, floats, opset, foldedBatchNorms: folded.length, nodeNames };
  } catch (e) {
    for (const f of files.values()) f.close();
    throw e;
  }
}

export function closePrepared(p: PreparedModel): void {
  for (const f of p.files.values()) f.close();
}

export function checkExclusions(p: PreparedModel, exclude: Iterable<string>): void {
  const unknown = [...exclude].filter((x) => !p.nodeNames.has(x));
  if (unknown.length) throw new EdgeqError('E_EXCLUDE_UNKNOWN', `--exclude names no node of the model: ${unknown.join(', ')}`);
}

/** The plan on a graph: which nodes, which absorptions, which tensors to observe. */
export function planOn(p: PreparedModel, model: ModelProto, exclude: Set<string>): Plan {
  return makePlan(model.graph!, p.floats, { opset: p.opset, exclude });
}

export interface CalibrateStage {
  /** Samples [start, start + count) are used. */
  count: number;
  start?: number;
  /** 'minmax' keeps only min/max; anything else keeps a histogram, from which every method can decide. */
  collect: 'minmax' | 'histogram';
  bins: number;
  activations: 'uint8' | 'int8';
  batchSize?: number;
  threads?: number;
  onProgress?: (done: number, total: number) => void;
}

/** Runs the float model over the calibration samples and returns the filled observers. */
export async function calibrate(p: PreparedModel, observe: string[], stage: CalibrateStage): Promise<Map<string, Observer>> {
  const observers = new Map<string, Observer>();
  for (const t of observe) {
    observers.set(t, stage.collect === 'minmax' ? new MinMaxObserver() : new HistogramObserver({ bins: stage.bins, dtype: stage.activations }));
  }
  await runCalibration(p.probeBytes, p.inputs, { files: p.files, count: stage.count, start: stage.start ?? 0 }, {
    observers,
    batchSize: stage.batchSize ?? 16,
    threads: stage.threads,
    onProgress: stage.onProgress,
  });
  return observers;
}

/** Ranges for one method from the observers (a MinMaxObserver answers only 'minmax'). */
export function rangesFor(observers: Map<string, Observer>, method: CalibrationMethod, profile: Profile, percentile?: number): Map<string, Range> {
  const ranges = new Map<string, Range>();
  for (const [name, o] of observers) {
    if (o.seen === 0) continue;
    try {
      if (o instanceof HistogramObserver) ranges.set(name, decideRange(method, o, { dtype: profile.activations, percentile }));
      else ranges.set(name, o.decide());
    } catch {
      // No finite value was seen: the tensor gets no range and stays float.
    }
  }
  return ranges;
}

export interface Converted {
  model: ModelProto;
  plan: Plan;
  /** For each quantized activation tensor, a tensor holding its dequantized int8 value. */
  dequantized: Map<string, string>;
  /** Producer outputs renamed for a quantized graph output: new name → graph output name. */
  renamedOutputs: Map<string, string>;
}

/** A QDQ model from the prepared float model and activation ranges. The prepared model is not touched. */
export function convert(p: PreparedModel, ranges: Map<string, Range>, profile: Profile, exclude: Set<string>): Converted {
  const model = clone(ModelProtoSchema, p.model);
  const plan = planOn(p, model, exclude);
  const emitted = emitQdq(model.graph!, plan, ranges, profile);
  model.producerName = 'edgeq';
  return { model, plan, dequantized: emitted.dequantized, renamedOutputs: emitted.renamedOutputs };
}

export interface Score {
  samples: number;
  /** Share of samples whose top-1 class matches fp32's (first output). */
  agreement: number;
  /** Output signal-to-quantization-noise ratio in dB, over all outputs. */
  sqnrDb: number;
  /** Top-1 accuracy against labels, when labels were given. */
  accuracy?: number;
}

export interface Reference {
  start: number;
  count: number;
  /** fp32 outputs per output name, concatenated over the held-out samples. */
  outputs: Map<string, Float32Array>;
  labels?: ArrayLike<number | bigint>;
  accuracy?: number;
}

async function runOutputs(model: Uint8Array, p: PreparedModel, start: number, count: number, threads?: number): Promise<Map<string, Float32Array>> {
  const session = await openSession(model, { threads });
  try {
    const names = session.outputNames.filter((_n, i) => i < p.model.graph!.output.length);
    const outs = new Map<string, Float32Array[]>(names.map((n) => [n, []]));
    const plan = planBatches(p.inputs, count, 32);
    await forEachBatch(session, p.inputs, p.files, { ...plan, start }, names, (out) => {
      for (const n of names) outs.get(n)!.push(Float32Array.from(out[n].data as Float32Array));
    });
    return new Map([...outs].map(([n, parts]) => {
      const all = new Float32Array(parts.reduce((a, b) => a + b.length, 0));
      let off = 0;
      for (const part of parts) { all.set(part, off); off += part.length; }
      return [n, all];
    }));
  } finally {
    await session.release();
  }
}

/** fp32 outputs on the held-out samples, computed once and compared against every candidate. */
export async function reference(p: PreparedModel, start: number, count: number, labels?: ArrayLike<number | bigint>, threads?: number): Promise<Reference> {
  const outputs = await runOutputs(encodeModel(p.model), p, start, count, threads);
  const ref: Reference = { start, count, outputs, labels };
  if (labels) ref.accuracy = top1Accuracy(outputs.values().next().value!, count, labels, start);
  return ref;
}

function top1Accuracy(data: Float32Array, n: number, labels: ArrayLike<number | bigint>, start: number): number {
  return accuracy(argmaxRows(data, n), Array.from({ length: n }, (_x, i) => labels[start + i]));
}

export function sqnrDb(ref: Float32Array, got: Float32Array): number {
  let sig = 0, noise = 0;
  for (let i = 0; i < ref.length; i++) {
    sig += ref[i] * ref[i];
    const d = ref[i] - got[i];
    noise += d * d;
  }
  return noise === 0 ? Infinity : 10 * Math.log10(sig / noise);
}

/** Runs a candidate int8 model on the held-out samples and compares it with the reference. */
export async function score(p: PreparedModel, ref: Reference, int8: Uint8Array, threads?: number): Promise<Score> {
  const outs = await runOutputs(int8, p, ref.start, ref.count, threads);
  const [first] = ref.outputs.keys();
  const same = agreement(argmaxRows(ref.outputs.get(first)!, ref.count), argmaxRows(outs.get(first)!, ref.count));
  let sig = 0, noise = 0;
  for (const [name, r] of ref.outputs) {
    const g = outs.get(name)!;
    for (let i = 0; i < r.length; i++) {
      sig += r[i] * r[i];
      noise += (r[i] - g[i]) ** 2;
    }
  }
  const s: Score = { samples: ref.count, agreement: same, sqnrDb: noise === 0 ? Infinity : 10 * Math.log10(sig / noise) };
  if (ref.labels) s.accuracy = top1Accuracy(outs.get(first)!, ref.count, ref.labels, ref.start);
  return s;
}

/**
 * SQNR of every quantized tensor between the float model and the int8 model on the held-out
 * samples, streamed batch by batch (memory stays at one batch of activations).
 */
export async function tensorSqnr(p: PreparedModel, conv: Converted, ref: Reference, tensors: string[], threads?: number): Promise<Map<string, number>> {
  // A quantized tensor is read at its first DequantizeLinear; a float graph output (a Gemm or
  // MatMul left with float output) under its own name.
  const outputs = new Set(conv.model.graph!.output.map((o) => o.name));
  const int8Name = new Map<string, string>();
  for (const t of tensors) {
    const q = conv.dequantized.get(t) ?? (outputs.has(t) ? t : undefined);
    if (q && p.floats.has(t)) int8Name.set(t, q);
  }
  const pairs = [...int8Name.keys()];
  const fp = await openSession(p.probeBytes, { threads });
  const q = await openSession(withExtraOutputs(conv.model, pairs.map((t) => int8Name.get(t)!)), { threads, optimization: 'disabled' });
  const acc = new Map(pairs.map((t) => [t, { sig: 0, noise: 0 }]));
  try {
    const plan = planBatches(p.inputs, ref.count, 8);
    const qOut = new Map<number, Record<string, ort.Tensor>>();
    await forEachBatch(q, p.inputs, p.files, { ...plan, start: ref.start }, [...new Set(pairs.map((t) => int8Name.get(t)!))], async (out, start) => {
      // Keep the int8 batch until the float batch for the same samples has been compared.
      qOut.set(start, Object.fromEntries(Object.entries(out).map(([k, v]) => [k, new ort.Tensor('float32', Float32Array.from(v.data as Float32Array), v.dims)])));
      await forEachBatch(fp, p.inputs, p.files, { batch: plan.batch, total: Math.min(plan.batch, ref.start + ref.count - start), start }, pairs, (fo) => {
        for (const t of pairs) {
          const r = fo[t].data as Float32Array;
          const g = qOut.get(start)![int8Name.get(t)!].data as Float32Array;
          const a = acc.get(t)!;
          for (let i = 0; i < r.length; i++) {
            a.sig += r[i] * r[i];
            a.noise += (r[i] - g[i]) ** 2;
          }
        }
      });
      qOut.delete(start);
    });
  } finally {
    await fp.release();
    await q.release();
  }
  return new Map([...acc].map(([t, a]) => [t, a.noise === 0 ? Infinity : 10 * Math.log10(a.sig / a.noise)]));
}
