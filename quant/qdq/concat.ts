/** Concat → QLinearConcat: each input keeps its own scale, the output has its own. */
import type { OpRule } from './rule.js';

export const concatRules: Record<string, OpRule> = {
  Concat: { activations: (n) => n.input.map((_x, i) => i), output: 'observed', int8OnCpu: true },
};
