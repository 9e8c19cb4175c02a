/** The arithmetic of turning float values into integers: one place for rounding and ranges. */
import { EdgeqError } from '../errors.js';
import { computeQParams, roundHalfEven, symmetricWeightScaleFor, weightQRange } from '../observe/qparams.js';
import type { Range } from '../observe/observer.js';
import type { ActivationType } from '../profiles.js';

export type { QParams } from '../observe/qparams.js';
import type { QParams } from '../observe/qparams.js';

/** Asymmetric activation parameters for a calibrated range (the range is widened to hold 0). */
export function activationQParams(range: Range, type: ActivationType): QParams {
  const lo = Math.min(range.min, 0), hi = Math.max(range.max, 0);
  // An all-zero tensor: any scale represents it; 1 keeps derived bias scales sane.
  if (!(hi - lo > 1e-30)) return { scale: 1, zeroPoint: type === 'uint8' ? 0 : 0 };
  return computeQParams({ min: lo, max: hi }, { dtype: type, symmetric: false });
}

export interface QuantizedWeight {
  values: Int8Array;
  /** One scale per channel of `axis`, or a single scale. */
  scales: Float32Array;
  axis?: number;
}

/**
 * Symmetric int8 weights, zero point 0, ONNX Runtime's range ±127 (±64 with reduceRange: 7-bit
 * weights keep u8×s8 pair sums inside int16 on x86 without VNNI). `axis` picks per-channel
 * scales along any axis (Conv: 0, ConvTranspose and Gemm without transB: 1).
 */
export function quantizeWeight(w: Float32Array, dims: number[], axis: number | undefined, reduceRange: boolean, name = 'weight'): QuantizedWeight {
  const { qmin, qmax } = weightQRange(reduceRange);
  const channels = axis === undefined ? 1 : dims[axis];
  const inner = axis === undefined ? w.length : dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const channelOf = (i: number) => (axis === undefined ? 0 : Math.floor(i / inner) % channels);
  const maxAbs = new Float64Array(channels);
  for (let i = 0; i < w.length; i++) {
    const a = Math.abs(w[i]);
    if (!Number.isFinite(a)) throw new EdgeqError('E_MODEL_INVALID', `${name} holds a non-finite value at index ${i}`);
    const c = channelOf(i);
    if (a > maxAbs[c]) maxAbs[c] = a;
  }
  const scales = Float32Array.from(maxAbs, (m) => symmetricWeightScaleFor(m, reduceRange));
  const values = new Int8Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const q = roundHalfEven(w[i] / scales[channelOf(i)]);
    values[i] = q > qmax ? qmax : q < qmin ? qmin : q;
  }
  return { values, scales, axis };
}

export interface QuantizedBias {
  values: Int32Array;
  scales: Float32Array;
}

/** int32 bias with scale = input scale × weight scale (per channel when the weights are). */
export function quantizeBias(b: Float32Array, inputScale: number, weightScales: Float32Array, channels: number): QuantizedBias {
  const scales = new Float32Array(weightScales.length);
  for (let c = 0; c < weightScales.length; c++) scales[c] = inputScale * weightScales[c];
  const values = new Int32Array(channels);
  for (let c = 0; c < channels; c++) {
    const v = b.length === 1 ? b[0] : b[c];
    const q = roundHalfEven(v / scales[scales.length === 1 ? 0 : c]);
    values[c] = Math.max(-2147483648, Math.min(2147483647, q));
  }
  return { values, scales };
}
