/** Evaluation primitives: run a model over .npy samples and collect per-sample results. */
import { forEachBatch, planBatches, type InputInfo } from './feed.js';
import type { NpyFile } from './npy.js';
import { openSession, type SessionOptions } from './runtime.js';

/** Index of the largest value in each row of a [n, classes] block. */
export function argmaxRows(data: Float32Array, n: number): Int32Array {
  const classes = data.length / n;
  const out = new Int32Array(n);
  for (let r = 0; r < n; r++) {
    let best = 0, bestV = -Infinity;
    for (let c = 0; c < classes; c++) {
      const v = data[r * classes + c];
      if (v > bestV) { bestV = v; best = c; }
    }
    out[r] = best;
  }
  return out;
}

/** Top-1 class of every sample, for a model whose first output is [N, classes] scores. */
export async function predictTop1(model: string | Uint8Array, files: Map<string, NpyFile>, count: number, opts: SessionOptions & { batch?: number } = {}): Promise<Int32Array> {
  const { data, rows } = await firstOutput(model, files, count, opts);
  return argmaxRows(data, rows);
}

export function accuracy(preds: Int32Array, labels: ArrayLike<number | bigint>): number {
  let hit = 0;
  for (let i = 0; i < preds.length; i++) if (preds[i] === Number(labels[i])) hit++;
  return preds.length ? hit / preds.length : 0;
}

export function agreement(a: Int32Array, b: Int32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return a.length ? same / a.length : 0;
}

/** The first output over all samples, concatenated (for small outputs such as class scores). */
export async function firstOutput(model: string | Uint8Array, files: Map<string, NpyFile>, count: number, opts: SessionOptions & { batch?: number } = {}): Promise<{ data: Float32Array; rows: number }> {
  const session = await openSession(model, opts);
  try {
    const inputs: InputInfo[] = session.inputMetadata.map((m) => ({ name: m.name, type: m.isTensor ? m.type : 'unknown', shape: m.isTensor ? m.shape : [] }));
    const named = new Map(files);
    if (named.has('') && inputs.length === 1) {
      named.set(inputs[0].name, named.get('')!);
      named.delete('');
    }
    const plan = planBatches(inputs, count, opts.batch ?? 64);
    const output = session.outputNames[0];
    const parts: Float32Array[] = [];
    await forEachBatch(session, inputs, named, plan, [output], (out) => {
      parts.push(Float32Array.from(out[output].data as Float32Array));
    });
    const all = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
    let off = 0;
    for (const p of parts) { all.set(p, off); off += p.length; }
    return { data: all, rows: plan.total };
  } finally {
    await session.release();
  }
}
