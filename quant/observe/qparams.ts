/**
 * Scale and zero point from a range, as PyTorch's observers compute them
 * (UniformQuantizationObserverBase._calculate_qparams, per tensor, 1.13), and ONNX Runtime's
 * per-channel / per-tensor scales for symmetric int8 weights. Scales are float32 values
 * (computed with Math.fround where torch computes in float32 tensors).
 */
import type { Range } from './observer.js';

export type QDtype = 'uint8' | 'int8';

export interface QParams {
  scale: number;
  zeroPoint: number;
}

export interface QParamsOptions {
  dtype: QDtype;
  symmetric: boolean;
  /** One bit less: uint8 0..127, int8 -64..63 (torch's reduce_range). */
  reduceRange?: boolean;
}

/** torch.finfo(torch.float32).eps, the smallest scale torch's observers return. */
export const FLOAT32_EPS = 2 ** -23;
/** numpy.finfo(numpy.float32).tiny: ONNX Runtime uses scale 1 below it. */
export const FLOAT32_TINY = 2 ** -126;

const f32 = Math.fround;

/** torch.round / numpy.round / std::nearbyint: round half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The integer range torch uses for activations (calculate_qmin_qmax without a custom range). */
export function qRange(dtype: QDtype, reduceRange = false): { qmin: number; qmax: number } {
  if (dtype === 'uint8') return reduceRange ? { qmin: 0, qmax: 127 } : { qmin: 0, qmax: 255 };
  if (dtype === 'int8') return reduceRange ? { qmin: -64, qmax: 63 } : { qmin: -128, qmax: 127 };
  throw new RangeError(`unsupported quantized dtype ${String(dtype)}`);
}

/**
 * torch's _calculate_qparams for a per-tensor range: the range is widened to include 0;
 * affine: scale = (max - min) / (qmax - qmin), zero point = qmin - round(min / scale) clamped;
 * symmetric: scale = max(|min|, |max|) / ((qmax - qmin) / 2), zero point 0 (int8) or 128
 * (uint8; with reduceRange rejected, as torch's MinMaxObserver does). Scales below float32 eps become eps.
 */
export function computeQParams(range: Range, opts: QParamsOptions): QParams {
  const { min, max } = range;
  if (!Number.isFinite(min) || !Number.isFinite(max)) throw new RangeError(`computeQParams: range [${min}, ${max}] is not finite`);
  if (min > max) throw new RangeError(`computeQParams: min ${min} is greater than max ${max}`);
  const { qmin, qmax } = qRange(opts.dtype, opts.reduceRange ?? false);
  const minNeg = Math.min(f32(min), 0);
  const maxPos = Math.max(f32(max), 0);
  if (opts.symmetric) {
    if (opts.dtype === 'uint8' && opts.reduceRange) {
      // torch's MinMaxObserver refuses this too (zero point 128 would lie outside 0..127).
      throw new RangeError('computeQParams: reduceRange is not supported for symmetric uint8');
    }
    const absMax = Math.max(-minNeg, maxPos);
    const scale = Math.max(f32(absMax / ((qmax - qmin) / 2)), FLOAT32_EPS);
    return { scale, zeroPoint: opts.dtype === 'uint8' ? 128 : 0 };
  }
  const scale = Math.max(f32(f32(maxPos - minNeg) / (qmax - qmin)), FLOAT32_EPS);
  const zp = qmin - roundHalfEven(f32(minNeg / scale));
  return { scale, zeroPoint: Math.min(qmax, Math.max(qmin, zp)) + 0 };
}

/** Quantizes one value: clamp(round_half_even(x / scale) + zeroPoint, qmin, qmax). */
export function quantizeValue(x: number, qp: QParams, qmin: number, qmax: number): number {
  const q = roundHalfEven(x / qp.scale) + qp.zeroPoint;
  return q < qmin ? qmin : q > qmax ? qmax : q;
}

/** qp.scale · (q − qp.zeroPoint). */
export function dequantizeValue(q: number, qp: QParams): number {
  return qp.scale * (q - qp.zeroPoint);
}

/**
 * Integer range of symmetric int8 weights, ONNX Runtime's convention
 * (quant_utils.get_qmin_qmax_for_qType, symmetric): [-127, 127], or [-64, 64] with reduce_range.
 */
export function weightQRange(reduceRange = false): { qmin: number; qmax: number } {
  return reduceRange ? { qmin: -64, qmax: 64 } : { qmin: -127, qmax: 127 };
}

/** Scale of symmetric int8 weights whose largest magnitude is `absMax` (1 for an all-zero tensor or channel). */
export function symmetricWeightScaleFor(absMax: number, reduceRange = false): number {
  const halfRange = weightQRange(reduceRange).qmax;
  // ORT: (rmax - rmin) in float32 = 2·absMax, divided by (qmax - qmin) in float64, cast to float32.
  const scale = f32(f32(2 * absMax) / (2 * halfRange));
  return scale < FLOAT32_TINY ? 1 : scale;
}

/**
 * Per-output-channel scales for symmetric int8 weights (zero point 0): the weights are
 * [channels, ...] row-major, channel c is the c-th contiguous block; scale = max|w| / 127
 * (or / 64 with reduceRange), 1 for an all-zero channel.
 */
export function symmetricWeightScales(weights: Float32Array, channels: number, opts: { reduceRange?: boolean } = {}): Float32Array {
  if (!Number.isInteger(channels) || channels < 1) throw new RangeError(`symmetricWeightScales: channels must be a positive integer, got ${channels}`);
  if (weights.length % channels !== 0) {
    throw new RangeError(`symmetricWeightScales: ${weights.length} weights do not split into ${channels} channels`);
  }
  const per = weights.length / channels;
  const scales = new Float32Array(channels);
  for (let c = 0; c < channels; c++) {
    let absMax = 0;
    for (let i = c * per, end = i + per; i < end; i++) {
      const a = Math.abs(weights[i]);
      if (!(a <= 3.4028234663852886e38)) throw new RangeError(`symmetricWeightScales: weight ${i} (channel ${c}) is not finite`);
      if (a > absMax) absMax = a;
    }
    scales[c] = symmetricWeightScaleFor(absMax, opts.reduceRange);
  }
  return scales;
}

/** Per-tensor scale for symmetric int8 weights (zero point 0); see symmetricWeightScales. */
export function symmetricWeightScale(weights: Float32Array, opts: { reduceRange?: boolean } = {}): number {
  return weights.length === 0 ? 1 : symmetricWeightScales(weights, 1, opts)[0];
}
