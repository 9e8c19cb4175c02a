/**
 * Ops that move or select values without computing new ones. ORT drops the Q/DQ around them
 * (running them on 8-bit data) when input and output share scale and zero point.
 */
import type { OpRule } from './rule.js';

const shared: OpRule = { activations: () => [0], output: 'shareInput', int8OnCpu: true };

export const passthroughRules: Record<string, OpRule> = {
  Reshape: shared,
  Flatten: shared,
  Transpose: shared,
  Squeeze: shared,
  Unsqueeze: shared,
  Slice: shared,
  Gather: shared,
  Expand: shared,
  Tile: shared,
  Split: shared,
  Resize: shared,
};
