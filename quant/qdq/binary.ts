/** Add and Mul → QLinearAdd / QLinearMul (both inputs quantized, constants included). */
import type { OpRule } from './rule.js';

const binary: OpRule = { activations: () => [0, 1], output: 'observed', int8OnCpu: true, absorbsActivation: true };

export const binaryRules: Record<string, OpRule> = { Add: binary, Mul: binary };
