/** What the QDQ emitter needs to know about one op type. One file per op family registers these. */
import type { NodeProto } from 'onnx-buf';

export interface WeightSpec {
  /** Input index of the weight (an initializer). */
  input: number;
  /** Axis of the output channels, for per-channel scales; undefined: per-tensor only. */
  axis?: number;
  /**
   * Give the weight's DequantizeLinear an explicit zero-point tensor. ORT's Conv fusion fills in
   * the default 0 itself; its Gemm and MatMul fusions need the input present.
   */
  zeroPoint?: boolean;
}

export interface OpRule {
  /** Input indices that carry activations to put behind DequantizeLinear. */
  activations(node: NodeProto): number[];
  /** The weight input, quantized to int8 symmetric, when it is an initializer. */
  weight?(node: NodeProto, weightDims: number[]): WeightSpec | undefined;
  /** Input index of a bias quantized to int32 with scale = input scale × weight scale. */
  bias?: number;
  /**
   * How outputs are quantized: 'observed' — their own calibrated range; 'shareInput' — the same
   * scale and zero point as input 0 (ORT drops Q/DQ around such ops only when they match);
   * 'fixed' — a range fixed by the op (Softmax: [0, 1]).
   */
  output: 'observed' | 'shareInput' | 'fixed';
  fixedRange?: { min: number; max: number };
  /** The output may stay float when nothing but the graph output reads it (QGemm, MatMulIntegerToFloat). */
  floatOutputWhenTerminal?: boolean;
  /** ORT's CPU provider runs this op in 8 bits once Q/DQ are fused or dropped around it. */
  int8OnCpu: boolean;
  /** Why this particular node cannot be quantized (attributes, opset), or undefined if it can. */
  unsupported?(node: NodeProto, opset: number): string | undefined;
  /** A Relu/Clip(0, …) right after this op can be absorbed into its output range. */
  absorbsActivation?: boolean;
}
