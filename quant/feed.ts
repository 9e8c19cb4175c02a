/** Streams .npy samples through an ORT session, one batch at a time. */
import { EdgeqError } from './errors.js';
import type { NpyFile } from './npy.js';
import { ort } from './runtime.js';

export interface InputInfo {
  name: string;
  type: string;
  /** Dimensions; strings or -1 are dynamic. */
  shape: ReadonlyArray<number | string>;
}

export interface BatchPlan {
  batch: number;
  /** Samples that will be run (a fixed batch size drops the remainder). */
  total: number;
  /** First sample (default 0). */
  start?: number;
}

/** A fixed leading dimension fixes the batch size; a dynamic one lets us batch. */
export function planBatches(inputs: InputInfo[], count: number, wanted: number): BatchPlan {
  const fixed = inputs.map((i) => i.shape[0]).find((d): d is number => typeof d === 'number' && d > 0);
  const batch = fixed ?? Math.max(1, wanted);
  const total = fixed ? count - (count % fixed) : count;
  if (total === 0) throw new EdgeqError('E_CALIB_EMPTY', `the model takes batches of ${fixed} samples, the data holds only ${count}`);
  return { batch, total };
}

/**
 * Runs the session over samples [0, count) and hands each batch's outputs to `onBatch`; the
 * output tensors are released after the callback returns.
 */
export async function forEachBatch(
  session: ort.InferenceSession,
  inputs: InputInfo[],
  files: Map<string, NpyFile>,
  plan: BatchPlan,
  fetches: string[],
  onBatch: (outputs: Record<string, ort.Tensor>, start: number, n: number) => void | Promise<void>,
): Promise<void> {
  const first = plan.start ?? 0;
  const end = first + plan.total;
  for (let start = first; start < end; start += plan.batch) {
    const n = Math.min(plan.batch, end - start);
    const feeds: Record<string, ort.Tensor> = {};
    for (const input of inputs) {
      const f = files.get(input.name)!;
      feeds[input.name] = new ort.Tensor(input.type as 'float32', f.read(start, n) as Float32Array, [n, ...f.shape.slice(1)]);
    }
    let out: ort.InferenceSession.OnnxValueMapType;
    try {
      out = await session.run(feeds, fetches);
    } catch (e) {
      throw new EdgeqError('E_RUNTIME', `ONNX Runtime failed on samples ${start}..${start + n - 1}: ${(e as Error).message.split('\n')[0]}`, { cause: e });
    }
    try {
      await onBatch(out as Record<string, ort.Tensor>, start, n);
    } finally {
      for (const t of Object.values(out)) (t as ort.Tensor).dispose?.();
    }
  }
}
