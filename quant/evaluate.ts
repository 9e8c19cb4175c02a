/**
 * `edgeq eval`: one model, or a model and its quantized twin, over .npy samples.
 *
 * Everything streams: each batch runs through both models, is folded into running sums
 * (counts of correct top-1/top-5, Σr², Σ(r-g)², Σr·g, Σg², max |r-g| per output and per
 * layer) and released, so memory is one batch of activations whatever the sample count.
 *
 * Per-layer error (`layers`): for every tensor the compared model quantizes — a QuantizeLinear
 * whose input is an activation with the same name in the float model, read back at its
 * DequantizeLinear — the float model's value against the quantized model's dequantized value,
 * as ONNX Runtime's qdq_loss_debug and PyTorch's Numeric Suite do. The quantized model runs that
 * pass unoptimized (ORT would fuse the QDQ pairs away and the tensors would not exist); its
 * arithmetic is the same rounding and clipping. Accuracy and the output figures always come from
 * the optimized session, i.e. the int8 kernels.
 */
import { performance } from 'node:perf_hooks';
import { withExtraOutputs } from './calibrate.js';
import { bindDataFiles, closeDataFiles, openDataFiles, readLabels } from './data.js';
import { EdgeqError } from './errors.js';
import { forEachBatch, planBatches, type InputInfo } from './feed.js';
import type { NpyFile } from './npy.js';
import { readModel, type ModelProto } from './onnx/model.js';
import { openSession, ort } from './runtime.js';

export interface EvaluateOptions {
  model: string;
  /** A second model with the same inputs and outputs (typically the int8 one). */
  compare?: string;
  /** One .npy per input name; '' for the only input. */
  data: Map<string, string>;
  /** 1-D integer .npy, one class per sample. */
  labels?: string;
  /** Per-layer error of the compared model (needs `compare`, a QDQ model). */
  layers?: boolean;
  /** Use only the first `count` samples. */
  count?: number;
  batch?: number;
  threads?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface ModelScore {
  path: string;
  /** Against labels, when given. */
  top1?: number;
  /** Against labels, when the first output has at least 5 classes. */
  top5?: number;
}

/** Error of the compared model's output against the reference model's. */
export interface ErrorStats {
  sqnrDb: number;
  cosine: number;
  maxAbsError: number;
  meanAbsError: number;
}

export interface OutputComparison extends ErrorStats {
  name: string;
  /** Shape of one sample's output (the batch axis left out). */
  sampleShape: number[];
}

export interface LayerComparison extends ErrorStats {
  tensor: string;
  /** The float model's node that produces the tensor ('' for a graph input). */
  node: string;
  opType: string;
}

export interface EvaluateResult {
  samples: number;
  /** Classes of the first output when it is [N, classes]. */
  classes?: number;
  model: ModelScore;
  compare?: ModelScore;
  /** Share of samples where both models' top-1 classes agree. */
  agreement?: number;
  outputs?: OutputComparison[];
  /** Worst (lowest SQNR) first. */
  layers?: LayerComparison[];
  timingsMs: { total: number };
}

/** Running sums for one compared tensor. */
class ErrorSums {
  sig = 0;
  noise = 0;
  dot = 0;
  got2 = 0;
  abs = 0;
  max = 0;
  n = 0;

  add(r: ArrayLike<number>, g: ArrayLike<number>): void {
    for (let i = 0; i < r.length; i++) {
      const a = r[i];
      const b = g[i];
      const d = a - b;
      this.sig += a * a;
      this.noise += d * d;
      this.dot += a * b;
      this.got2 += b * b;
      const ad = Math.abs(d);
      this.abs += ad;
      if (ad > this.max || Number.isNaN(ad)) this.max = ad;
    }
    this.n += r.length;
  }

  stats(): ErrorStats {
    const den = Math.sqrt(this.sig * this.got2);
    return {
      sqnrDb: this.noise === 0 ? Infinity : 10 * Math.log10(this.sig / this.noise),
      cosine: den === 0 ? (this.sig === this.got2 ? 1 : 0) : this.dot / den,
      maxAbsError: this.max,
      meanAbsError: this.n ? this.abs / this.n : 0,
    };
  }
}

/** A tensor's values as numbers (int64 outputs such as class ids included). */
function numbers(t: ort.Tensor): ArrayLike<number> {
  const d = t.data;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) return Float64Array.from(d, Number);
  if (typeof d[0] === 'string') throw new EdgeqError('E_MODEL_UNSUPPORTED', 'string outputs cannot be compared');
  return d as ArrayLike<number>;
}

/** Indices of the k largest values of row r (k small), best first. */
function topK(data: ArrayLike<number>, r: number, classes: number, k: number): number[] {
  const best: number[] = [];
  for (let c = 0; c < classes; c++) {
    const v = data[r * classes + c];
    let at = best.length;
    while (at > 0 && data[r * classes + best[at - 1]] < v) at--;
    if (at < k) {
      best.splice(at, 0, c);
      if (best.length > k) best.pop();
    }
  }
  return best;
}

interface Side {
  path: string;
  session: ort.InferenceSession;
  top1: number;
  top5: number;
}

function inputsOf(s: ort.InferenceSession, path: string): InputInfo[] {
  return s.inputMetadata.map((m) => {
    if (!m.isTensor) throw new EdgeqError('E_MODEL_UNSUPPORTED', `${path}: input "${m.name}" is not a tensor`);
    return { name: m.name, type: m.type, shape: m.shape };
  });
}

function checkSameInterface(a: ort.InferenceSession, b: ort.InferenceSession, outputs: string[], pa: string, pb: string): void {
  const sig = (s: ort.InferenceSession, meta: readonly ort.InferenceSession.ValueMetadata[]) =>
    meta.map((m) => `${m.name}:${m.isTensor ? m.type : 'non-tensor'}`).join(', ');
  const ia = sig(a, a.inputMetadata);
  const ib = sig(b, b.inputMetadata);
  if (ia !== ib) throw new EdgeqError('E_MODEL_MISMATCH', `the models take different inputs: ${pa} (${ia}) vs ${pb} (${ib})`);
  if (outputs.join('\n') !== b.outputNames.join('\n')) {
    throw new EdgeqError('E_MODEL_MISMATCH', `the models have different outputs: ${pa} (${outputs.join(', ')}) vs ${pb} (${b.outputNames.join(', ')})`);
  }
}

/** Quantized activations of a QDQ model that the float model also has: float name → dequantized name. */
export function quantizedTensors(q: ModelProto, float: ModelProto): Map<string, string> {
  const g = q.graph!;
  const init = new Set(g.initializer.map((t) => t.name));
  const floatTensors = new Set([...float.graph!.input.map((i) => i.name), ...float.graph!.node.flatMap((n) => n.output)]);
  const dqOf = new Map<string, string>();
  for (const n of g.node) if (n.opType === 'DequantizeLinear' && !dqOf.has(n.input[0])) dqOf.set(n.input[0], n.output[0]);
  const pairs = new Map<string, string>();
  for (const n of g.node) {
    if (n.opType !== 'QuantizeLinear' || init.has(n.input[0]) || !floatTensors.has(n.input[0])) continue;
    const d = dqOf.get(n.output[0]);
    if (d && !pairs.has(n.input[0])) pairs.set(n.input[0], d);
  }
  return pairs;
}

export async function evaluate(opts: EvaluateOptions): Promise<EvaluateResult> {
  const t0 = performance.now();
  if (opts.layers && !opts.compare) throw new EdgeqError('E_ARGUMENT', '--layers compares two models: give --compare INT8.onnx');
  const files = openDataFiles(opts.data);
  const sessions: ort.InferenceSession[] = [];
  const open = async (m: string | Uint8Array, o: Parameters<typeof openSession>[1]) => {
    const s = await openSession(m, o);
    sessions.push(s);
    return s;
  };
  try {
    const threads = opts.threads;
    // Layers: which tensors, and the float model with them as outputs.
    let pairs = new Map<string, string>();
    let floatModel: ModelProto | undefined;
    if (opts.layers) {
      floatModel = readModel(opts.model);
      pairs = quantizedTensors(readModel(opts.compare!), floatModel);
      if (pairs.size === 0) {
        throw new EdgeqError('E_MODEL_UNSUPPORTED', `--layers needs a QDQ model (QuantizeLinear/DequantizeLinear pairs on tensors named as in ${opts.model}); ${opts.compare} has none`);
      }
    }
    const ref = await open(floatModel ? withExtraOutputs(floatModel, pairs.keys()) : opts.model, { threads });
    const outputs = ref.outputNames.slice(0, floatModel ? floatModel.graph!.output.length : ref.outputNames.length);
    const inputs = inputsOf(ref, opts.model);
    const total = bindDataFiles(inputs, files, { what: 'data', flag: '--data' });
    const count = opts.count ? Math.min(opts.count, total) : total;
    const labels = opts.labels ? readLabels(opts.labels, total, 'data samples', true) : undefined;
    let cmp: ort.InferenceSession | undefined;
    let cmpLayers: ort.InferenceSession | undefined;
    if (opts.compare) {
      cmp = await open(opts.compare, { threads });
      checkSameInterface(ref, cmp, outputs, opts.model, opts.compare);
      if (opts.layers) cmpLayers = await open(withExtraOutputs(readModel(opts.compare), pairs.values()), { threads, optimization: 'disabled' });
    }
    const sides: Side[] = [{ path: opts.model, session: ref, top1: 0, top5: 0 }];
    if (cmp) sides.push({ path: opts.compare!, session: cmp, top1: 0, top5: 0 });

    const outSums = new Map(outputs.map((o) => [o, new ErrorSums()]));
    const outShape = new Map<string, number[]>();
    const layerSums = new Map([...pairs.keys()].map((t) => [t, new ErrorSums()]));
    let classes: number | undefined;
    let agree = 0;
    const plan = planBatches(inputs, count, opts.batch ?? 32);
    let done = 0;
    await forEachBatch(ref, inputs, files, plan, [...outputs, ...pairs.keys()], async (refOut, start, n) => {
      const first = refOut[outputs[0]];
      if (classes === undefined) {
        classes = first.dims.length === 2 && first.dims[1] >= 2 ? Number(first.dims[1]) : 0;
        if (labels && !classes) {
          throw new EdgeqError('E_ARGUMENT', `--labels needs a classifier: the first output "${outputs[0]}" is [${first.dims.join(', ')}], not [N, classes]`);
        }
      }
      const tops: number[][][] = [];
      for (const side of sides) {
        let out = refOut;
        if (side.session !== ref) out = await runBatch(side.session, inputs, files, start, n, outputs);
        try {
          if (classes) {
            const data = numbers(out[outputs[0]]);
            const k = Math.min(5, classes);
            const rows: number[][] = [];
            for (let r = 0; r < n; r++) {
              const top = topK(data, r, classes, k);
              rows.push(top);
              if (labels) {
                const y = Number(labels[start + r]);
                if (top[0] === y) side.top1++;
                if (top.includes(y)) side.top5++;
              }
            }
            tops.push(rows);
          }
          if (side.session !== ref) {
            for (const o of outputs) {
              const a = refOut[o];
              const b = out[o];
              if (a.dims.join(',') !== b.dims.join(',')) {
                throw new EdgeqError('E_MODEL_MISMATCH', `output "${o}" is [${a.dims.join(', ')}] in ${opts.model} but [${b.dims.join(', ')}] in ${side.path}`);
              }
              outSums.get(o)!.add(numbers(a), numbers(b));
              if (!outShape.has(o)) outShape.set(o, a.dims.slice(1).map(Number));
            }
          }
        } finally {
          if (side.session !== ref) for (const t of Object.values(out)) t.dispose?.();
        }
      }
      if (tops.length === 2) for (let r = 0; r < n; r++) if (tops[0][r][0] === tops[1][r][0]) agree++;
      if (cmpLayers) {
        const lo = await runBatch(cmpLayers, inputs, files, start, n, [...pairs.values()]);
        try {
          for (const [t, d] of pairs) layerSums.get(t)!.add(numbers(refOut[t]), numbers(lo[d]));
        } finally {
          for (const t of Object.values(lo)) t.dispose?.();
        }
      }
      done += n;
      opts.onProgress?.(done, plan.total);
    });

    const samples = plan.total;
    const score = (s: Side): ModelScore => {
      const m: ModelScore = { path: s.path };
      if (labels && classes) {
        m.top1 = s.top1 / samples;
        if (classes >= 5) m.top5 = s.top5 / samples;
      }
      return m;
    };
    const result: EvaluateResult = { samples, model: score(sides[0]), timingsMs: { total: 0 } };
    if (classes) result.classes = classes;
    if (cmp) {
      result.compare = score(sides[1]);
      if (classes) result.agreement = agree / samples;
      result.outputs = outputs.map((o) => ({ name: o, sampleShape: outShape.get(o) ?? [], ...outSums.get(o)!.stats() }));
    }
    if (opts.layers) {
      const producer = new Map<string, { node: string; opType: string }>();
      for (const nd of floatModel!.graph!.node) for (const o of nd.output) producer.set(o, { node: nd.name, opType: nd.opType });
      result.layers = [...layerSums]
        .map(([t, s]) => ({ tensor: t, ...(producer.get(t) ?? { node: '', opType: 'graph input' }), ...s.stats() }))
        .sort((a, b) => a.sqnrDb - b.sqnrDb);
    }
    result.timingsMs.total = Math.round(performance.now() - t0);
    return result;
  } finally {
    for (const s of sessions) await s.release();
    closeDataFiles(files);
  }
}

/** One batch [start, start + n) through a session; the caller disposes the outputs. */
async function runBatch(session: ort.InferenceSession, inputs: InputInfo[], files: Map<string, NpyFile>, start: number, n: number, fetches: string[]): Promise<Record<string, ort.Tensor>> {
  let out: Record<string, ort.Tensor> = {};
  await forEachBatch(session, inputs, files, { batch: n, total: n, start }, fetches, (o) => {
    // Copy out: forEachBatch releases its tensors when the callback returns.
    out = Object.fromEntries(Object.entries(o).map(([k, v]) => [k, new ort.Tensor(v.type as 'float32', (v.data as Float32Array).slice(), v.dims)]));
  });
  return out;
}
