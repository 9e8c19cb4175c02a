/** Gemm → QGemm and MatMul → QLinearMatMul (or MatMulIntegerToFloat when the output stays float). */
import { attrInt } from '../onnx/graph.js';
import type { OpRule } from './rule.js';

export const matmulRules: Record<string, OpRule> = {
  Gemm: {
    activations: () => [0],
    // B is [N, K] with transB, else [K, N]; per-channel scales follow N.
    weight: (n, dims) => (dims.length === 2 ? { input: 1, axis: attrInt(n, 'transB', 0) === 1 ? 0 : 1, zeroPoint: true } : undefined),
    bias: 2,
    output: 'observed',
    floatOutputWhenTerminal: true,
    int8OnCpu: true,
    absorbsActivation: true,
  },
  MatMul: {
    // Both inputs are activations unless B is an initializer (then it is the weight).
    activations: () => [0, 1],
    // QLinearMatMul takes per-tensor or per-column B scales; per-tensor is what every ORT
    // version fuses, so MatMul weights stay per-tensor.
    weight: (_n, dims) => (dims.length === 2 ? { input: 1, zeroPoint: true } : undefined),
    output: 'observed',
    floatOutputWhenTerminal: true,
    int8OnCpu: true,
    absorbsActivation: true,
  },
};
