/**
 * Reads the graph ONNX Runtime actually runs (after its QDQ fusions) and says which ops run in
 * 8 bits and which compute ops still run in float — the proof that an int8 model is fast.
 */
import { COMPUTE_OPS } from './qdq/registry.js';
import { passthroughRules } from './qdq/passthrough.js';
import { optimizedGraph } from './runtime.js';

export interface KernelCensus {
  /** Ops running on 8-bit data, by op type. */
  int8Ops: Record<string, number>;
  /** Compute ops still running on float data, by op type. */
  floatOps: Record<string, number>;
  /** Every op type of the runtime graph. */
  allOps: Record<string, number>;
}

const INT8_KERNEL = /^(QLinear\w+|QGemm|MatMulInteger\w*|ConvInteger|DynamicQuantize\w+|QAttention|QEmbedLayerNormalization)$/;
// Ops that may run on 8-bit data when their input is 8-bit (their Q/DQ were dropped).
const EIGHT_BIT_CAPABLE = new Set([...Object.keys(passthroughRules), 'MaxPool', 'NhwcMaxPool', 'GatherElements', 'ReduceMax', 'ReduceMin', 'Identity']);

function bump(rec: Record<string, number>, k: string): void {
  rec[k] = (rec[k] ?? 0) + 1;
}

export async function kernelCensus(model: string | Uint8Array, threads = 1): Promise<KernelCensus> {
  const g = await optimizedGraph(model, threads);
  const eightBit = new Set<string>();
  const census: KernelCensus = { int8Ops: {}, floatOps: {}, allOps: g.ops };
  for (const n of g.nodes) {
    const op = n.opType;
    if (op === 'QuantizeLinear') {
      n.outputs.forEach((o) => eightBit.add(o));
      continue;
    }
    if (op === 'DequantizeLinear') continue;
    if (INT8_KERNEL.test(op)) {
      bump(census.int8Ops, op);
      // QGemm / MatMulIntegerToFloat may write float; QLinear* always write 8-bit.
      if (op.startsWith('QLinear') || (op === 'QGemm' && n.inputs.length > 7)) n.outputs.forEach((o) => eightBit.add(o));
      continue;
    }
    if (EIGHT_BIT_CAPABLE.has(op) && eightBit.has(n.inputs[0])) {
      bump(census.int8Ops, op);
      n.outputs.forEach((o) => eightBit.add(o));
      continue;
    }
    if (COMPUTE_OPS.has(op)) bump(census.floatOps, op);
  }
  return census;
}
