/** Conv → QLinearConv on ORT's CPU provider. ConvTranspose has no int8 CPU kernel: its weights are stored in int8 and it runs in float. */
import type { OpRule } from './rule.js';

/** A convolution whose output channels lie on `channelAxis` of the weight. */
function convolution(channelAxis: number, int8OnCpu: boolean): OpRule {
  return {
    activations: () => [0],
    weight: (_n, dims) => (dims.length >= 3 ? { input: 1, axis: channelAxis } : undefined),
    bias: 2,
    output: 'observed',
    int8OnCpu,
    absorbsActivation: true,
  };
}

export const convRules: Record<string, OpRule> = {
  // Weight layout [Cout, Cin/group, k…].
  Conv: convolution(0, true),
  // Weight layout [Cin, Cout/group, k…]: output channels are axis 1.
  ConvTranspose: convolution(1, false),
};
