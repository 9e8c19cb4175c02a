/** Conv → QLinearConv on ORT's CPU provider. ConvTranspose has no int8 CPU kernel: its weights are stored in int8 and it runs in float. */
import type { OpRule } from './rule.js';

export const convRules: Record<string, OpRule> = {
  Conv: {
    activations: () => [0],
    weight: (_n, dims) => (dims.length >= 3 ? { input: 1, axis: 0 } : undefined),
    bias: 2,
    output: 'observed',
    int8OnCpu: true,
    absorbsActivation: true,
  },
  ConvTranspose: {
    activations: () => [0],
    // Weight layout [Cin, Cout/group, k…]: output channels are axis 1.
    weight: (_n, dims) => (dims.length >= 3 ? { input: 1, axis: 1 } : undefined),
    bias: 2,
    output: 'observed',
    int8OnCpu: false,
    absorbsActivation: true,
  },
};
