/**
 * Calibration: runs the float model in ONNX Runtime with every tensor to observe added as a graph
 * output, one batch at a time, and feeds each observer. Nothing is kept between batches but the
 * observers' state, so memory does not grow with the number of samples.
 */
import { create } from '@bufbuild/protobuf';
import { ValueInfoProtoSchema } from 'onnx-buf';
import type { ModelProto } from 'onnx-buf';
import { EdgeqError } from './errors.js';
import { encodeModel } from './onnx/model.js';
import type { NpyFile } from './npy.js';
import type { Observer } from './observe/observer.js';
import { forEachBatch, planBatches, type InputInfo } from './feed.js';
import { openSession } from './runtime.js';

export interface CalibrationSource {
  /** One .npy file per model input, all with the same number of samples. */
  files: Map<string, NpyFile>;
  /** Use `count` samples from `start` (default 0). */
  count: number;
  start?: number;
}

export type ModelInputInfo = InputInfo;

/** Adds `tensors` as (untyped) graph outputs; ORT infers their types. Returns a copy's bytes. */
export function withExtraOutputs(model: ModelProto, tensors: Iterable<string>): Uint8Array {
  const graph = model.graph!;
  const saved = graph.output;
  const have = new Set(saved.map((o) => o.name));
  const extra = [...tensors].filter((t) => !have.has(t)).map((name) => create(ValueInfoProtoSchema, { name }));
  graph.output = [...saved, ...extra];
  try {
    return encodeModel(model);
  } finally {
    graph.output = saved;
  }
}

export interface CalibrateOptions {
  observers: Map<string, Observer>;
  batchSize: number;
  threads?: number;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Runs `modelBytes` (which must output every observed tensor) over the data and feeds the
 * observers. Deciding ranges is left to the caller: each method decides differently.
 */
export async function runCalibration(modelBytes: Uint8Array, inputs: ModelInputInfo[], source: CalibrationSource, opts: CalibrateOptions): Promise<void> {
  const session = await openSession(modelBytes, { threads: opts.threads });
  try {
    const fetches = [...opts.observers.keys()];
    const plan = { ...planBatches(inputs, source.count, opts.batchSize), start: source.start ?? 0 };
    let done = 0;
    await forEachBatch(session, inputs, source.files, plan, fetches, (out, _start, n) => {
      for (const name of fetches) opts.observers.get(name)!.collect(out[name].data as Float32Array);
      done += n;
      opts.onProgress?.(done, plan.total);
    });
  } finally {
    await session.release();
  }
}

/** Element types ORT infers for the given tensors (outputs of the augmented model). */
export async function inferTensorTypes(modelBytes: Uint8Array): Promise<{ types: Map<string, string>; inputs: ModelInputInfo[] }> {
  const session = await openSession(modelBytes, { threads: 1, optimization: 'disabled' });
  try {
    const types = new Map<string, string>();
    for (const m of session.outputMetadata) if (m.isTensor) types.set(m.name, m.type);
    const inputs: ModelInputInfo[] = [];
    for (const m of session.inputMetadata) {
      if (!m.isTensor) throw new EdgeqError('E_MODEL_UNSUPPORTED', `model input "${m.name}" is not a tensor`);
      inputs.push({ name: m.name, type: m.type, shape: m.shape });
    }
    return { types, inputs };
  } finally {
    await session.release();
  }
}
