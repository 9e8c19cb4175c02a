/** The op types the quantizer knows, one family per file. Anything not here stays float. */
import { binaryRules } from './binary.js';
import { concatRules } from './concat.js';
import { convRules } from './conv.js';
import { matmulRules } from './matmul.js';
import { passthroughRules } from './passthrough.js';
import { poolRules } from './pool.js';
import type { OpRule } from './rule.js';
import { unaryRules } from './unary.js';

export type { OpRule, WeightSpec } from './rule.js';

const RULES: ReadonlyMap<string, OpRule> = new Map(
  Object.entries({ ...convRules, ...matmulRules, ...binaryRules, ...poolRules, ...unaryRules, ...passthroughRules, ...concatRules }),
);

/** The rule for a node of the default ONNX domain, if the quantizer handles its op type. */
export function ruleFor(opType: string, domain: string): OpRule | undefined {
  return domain === '' || domain === 'ai.onnx' ? RULES.get(opType) : undefined;
}

/** Compute-heavy op types: reported in `floatOps` when they still run in float. */
export const COMPUTE_OPS = new Set(['Conv', 'ConvTranspose', 'Gemm', 'MatMul', 'Add', 'Mul', 'AveragePool', 'GlobalAveragePool', 'Concat', 'Sigmoid', 'Softmax', 'LeakyRelu', 'HardSigmoid', 'MaxPool', 'Resize', 'Relu', 'Clip', 'BatchNormalization', 'FusedConv', 'FusedGemm', 'FusedMatMul', 'Einsum', 'LSTM', 'GRU', 'Attention']);
