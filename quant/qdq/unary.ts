/** Element-wise ops with QLinear lookup-table kernels in ORT (QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax). */
import type { OpRule } from './rule.js';

export const unaryRules: Record<string, OpRule> = {
  Sigmoid: { activations: () => [0], output: 'observed', int8OnCpu: true },
  LeakyRelu: { activations: () => [0], output: 'observed', int8OnCpu: true },
  // Softmax outputs lie in [0, 1]; ORT's QLinearSoftmax expects that fixed range.
  Softmax: { activations: () => [0], output: 'fixed', fixedRange: { min: 0, max: 1 }, int8OnCpu: true, unsupported: (_n, opset) => (opset < 13 ? 'Softmax before opset 13 flattens to 2-D; kept in float' : undefined) },
};
