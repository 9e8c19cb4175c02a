/**
 * Bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2) with empirical input
 * statistics: quantizing weights W to W̃ shifts each output channel's mean by
 * E[(W̃ − W) x] = Σ (W̃ − W)·E[x] (border padding aside). The per-channel means of every
 * corrected op's input are measured on calibration samples with the float model (streamed),
 * and the shift is subtracted from the channel's bias before the model is converted again.
 * Measuring against the float input isolates the weights' error: correcting for the error of
 * the whole int8 path at once would correct upstream errors twice.
 */
import { clone } from '@bufbuild/protobuf';
import { ModelProtoSchema, type NodeProto } from 'onnx-buf';
import { withExtraOutputs } from './calibrate.js';
import { forEachBatch, planBatches } from './feed.js';
import { attrInt, initializerMap, NameAllocator } from './onnx/graph.js';
import { makeTensor, tensorDims, tensorFloats } from './onnx/tensor.js';
import type { PreparedModel } from './pipeline.js';
import type { Profile } from './profiles.js';
import type { Plan } from './qdq/plan.js';
import { quantizeWeight } from './qdq/numerics.js';
import { openSession } from './runtime.js';

export interface BiasCorrection {
  node: string;
  channels: number;
  /** Largest |shift| applied to a channel's bias. */
  maxShift: number;
}

/** Per-channel (axis 1) means of tensors over calibration samples, streamed. */
async function channelMeans(p: PreparedModel, tensors: string[], samples: { start: number; count: number }, threads?: number): Promise<Map<string, Float64Array>> {
  const session = await openSession(withExtraOutputs(p.model, tensors), { threads });
  const sums = new Map<string, { s: Float64Array; n: number }>();
  try {
    const plan = { ...planBatches(p.inputs, samples.count, 16), start: samples.start };
    await forEachBatch(session, p.inputs, p.files, plan, tensors, (out) => {
      for (const t of tensors) {
        const v = out[t];
        const a = v.data as Float32Array;
        const c = v.dims.length > 1 ? Number(v.dims[1]) : 1;
        const inner = v.dims.slice(2).reduce((x, y) => x * Number(y), 1);
        let e = sums.get(t);
        if (!e) sums.set(t, (e = { s: new Float64Array(c), n: 0 }));
        for (let i = 0; i < a.length; i++) e.s[Math.floor(i / inner) % c] += a[i];
        e.n += a.length / c;
      }
    });
  } finally {
    await session.release();
  }
  return new Map([...sums].map(([t, e]) => [t, e.s.map((x) => x / e.n)]));
}

/** Shift of each output channel: Σ ΔW · E[x] over the weights feeding it. */
function shifts(node: NodeProto, dw: Float32Array, dims: number[], mean: Float64Array): Float64Array | undefined {
  if (node.opType === 'Conv') {
    const [cout, cinPerGroup] = dims;
    const k = dims.slice(2).reduce((a, b) => a * b, 1);
    const groups = attrInt(node, 'group', 1);
    if (mean.length !== cinPerGroup * groups) return undefined;
    const out = new Float64Array(cout);
    const perGroup = cout / groups;
    for (let c = 0; c < cout; c++) {
      const g = Math.floor(c / perGroup);
      let s = 0;
      for (let ci = 0; ci < cinPerGroup; ci++) {
        let w = 0;
        for (let j = 0; j < k; j++) w += dw[(c * cinPerGroup + ci) * k + j];
        s += w * mean[g * cinPerGroup + ci];
      }
      out[c] = s;
    }
    return out;
  }
  // Gemm, A [N, K] (transA = 0): y_c = Σ_k B·x_k with B [N_out, K] under transB, else [K, N_out].
  if (attrInt(node, 'transA', 0) !== 0) return undefined;
  const transB = attrInt(node, 'transB', 0) === 1;
  const [rows, cols] = dims;
  const cout = transB ? rows : cols, kk = transB ? cols : rows;
  if (mean.length !== kk) return undefined;
  const out = new Float64Array(cout);
  for (let c = 0; c < cout; c++) {
    let s = 0;
    for (let k = 0; k < kk; k++) s += (transB ? dw[c * kk + k] : dw[k * cout + c]) * mean[k];
    out[c] = s;
  }
  return out;
}

/**
 * A PreparedModel whose float model has corrected Conv/Gemm biases for the given plan's
 * quantized nodes and profile (the input is not changed), and what was corrected.
 */
export async function correctBiases(p: PreparedModel, plan: Plan, profile: Profile, samples: { start: number; count: number }, threads?: number): Promise<{ prepared: PreparedModel; corrections: BiasCorrection[] }> {
  const model = clone(ModelProtoSchema, p.model);
  const inits = initializerMap(model.graph!);
  const quantized = new Set([...plan.nodes].filter(([n, r]) => (n.opType === 'Conv' || n.opType === 'Gemm') && r.weight).map(([n]) => n.name));
  const targets = model.graph!.node.filter((n) => quantized.has(n.name) && inits.has(n.input[1]) && p.floats.has(n.input[0]));
  if (targets.length === 0) return { prepared: p, corrections: [] };
  const means = await channelMeans(p, [...new Set(targets.map((n) => n.input[0]))], samples, threads);
  const names = new NameAllocator(model.graph!);
  const corrections: BiasCorrection[] = [];
  for (const n of targets) {
    const w = inits.get(n.input[1])!;
    const dims = tensorDims(w);
    const wf = tensorFloats(w);
    const rule = plan.nodes.get([...plan.nodes.keys()].find((k) => k.name === n.name)!)!;
    const spec = rule.weight!(n, dims);
    if (!spec) continue;
    const q = quantizeWeight(wf, dims, profile.perChannel ? spec.axis : undefined, profile.reduceRange, `weight ${n.input[1]}`);
    const inner = q.axis === undefined ? wf.length : dims.slice(q.axis + 1).reduce((a, b) => a * b, 1);
    const dw = new Float32Array(wf.length);
    for (let i = 0; i < wf.length; i++) {
      const scale = q.axis === undefined ? q.scales[0] : q.scales[Math.floor(i / inner) % q.scales.length];
      dw[i] = q.values[i] * scale - wf[i];
    }
    const shift = shifts(n, dw, dims, means.get(n.input[0])!);
    if (!shift) continue;
    const old = n.input[2] ? inits.get(n.input[2]) : undefined;
    if (n.input[2] && !old) continue;
    const bias = old ? tensorFloats(old) : new Float32Array(shift.length);
    if (bias.length !== shift.length) continue;
    const next = Float32Array.from(bias, (b, c) => b - shift[c]);
    const name = names.fresh(`${n.name}.bias_corrected`);
    model.graph!.initializer.push(makeTensor(name, next, [next.length]));
    if (n.input.length < 3) n.input.push(name);
    else n.input[2] = name;
    corrections.push({ node: n.name, channels: next.length, maxShift: Math.round(Math.max(...Array.from(shift, Math.abs)) * 1e6) / 1e6 });
  }
  return { prepared: { ...p, model }, corrections };
}
