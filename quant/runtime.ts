/** onnxruntime-node sessions as the quantizer uses them: quiet, thread count chosen by the caller. */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import './ort-env.js';
import * as ort from 'onnxruntime-node';
import { EdgeqError, fsError } from './errors.js';
import { decodeModel } from './onnx/model.js';

export { ort };

export interface SessionOptions {
  threads?: number;
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Write the graph ORT will actually run to this path. */
  optimizedModelPath?: string;
  /** Spinning threads make two live sessions on a small box slow each other down several-fold. */
  spin?: boolean;
}

export async function openSession(model: string | Uint8Array, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const options: ort.InferenceSession.SessionOptions = {
    logSeverityLevel: 3,
    graphOptimizationLevel: opts.optimization ?? 'all',
    executionProviders: ['cpu'],
  };
  if (opts.threads) {
    options.intraOpNumThreads = opts.threads;
    options.interOpNumThreads = 1;
  }
  if (opts.optimizedModelPath) options.optimizedModelFilePath = opts.optimizedModelPath;
  if (opts.spin === false) options.extra = { session: { 'intra_op.allow_spinning': '0' } };
  if (typeof model === 'string') {
    // ORT's own message for a missing file is long and names no cause a person can act on.
    try {
      statSync(model);
    } catch (e) {
      throw fsError(e, model);
    }
  }
  try {
    return await ort.InferenceSession.create(model as Uint8Array, options);
  } catch (e) {
    const what = typeof model === 'string' ? model : 'the model';
    throw new EdgeqError('E_MODEL_INVALID', `ONNX Runtime cannot load ${what}: ${(e as Error).message.split('\n')[0]}`, { cause: e });
  }
}

/** Op-type counts of the graph ORT runs after its optimizations (QDQ fusions included). */
export interface RuntimeGraph {
  ops: Record<string, number>;
  /** The runtime graph's nodes in execution order, for tracing which tensors are 8-bit. */
  nodes: Array<{ opType: string; domain: string; inputs: string[]; outputs: string[] }>;
}

export async function optimizedGraph(model: string | Uint8Array, threads = 1): Promise<RuntimeGraph> {
  const dir = mkdtempSync(join(tmpdir(), 'edgeq-opt-'));
  try {
    const path = join(dir, 'optimized.onnx');
    const s = await openSession(model, { threads, optimizedModelPath: path });
    await s.release();
    const m = decodeModel(readFileSync(path), 'the optimized model');
    const ops: Record<string, number> = {};
    for (const n of m.graph!.node) ops[n.opType] = (ops[n.opType] ?? 0) + 1;
    return { ops, nodes: m.graph!.node.map((n) => ({ opType: n.opType, domain: n.domain, inputs: [...n.input], outputs: [...n.output] })) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
