/** Pooling: average pools get QLinear kernels; MaxPool runs on uint8 directly (opset >= 12) when its Q/DQ match. */
import type { OpRule } from './rule.js';

const averaging: OpRule = { activations: () => [0], output: 'observed', int8OnCpu: true };

export const poolRules: Record<string, OpRule> = {
  AveragePool: averaging,
  GlobalAveragePool: averaging,
  MaxPool: {
    activations: () => [0],
    output: 'shareInput',
    int8OnCpu: true,
    unsupported: (n, opset) =>
      opset < 12 ? 'MaxPool takes 8-bit input from opset 12' : n.output.length > 1 && n.output[1] ? 'MaxPool with an Indices output' : undefined,
  },
};
