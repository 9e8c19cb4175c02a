/**
 * PyTorch's HistogramObserver (torch.ao.quantization.observer, 1.13), ported: a running
 * histogram of fixed size (2048 bins by default) over [min, max] of everything seen, widened
 * and re-binned as new batches extend the range (`_adjust_min_max`, `_combine_histograms`),
 * and a range chosen by `_non_linear_param_search`, the L2-norm search that trims outliers.
 *
 * Fidelity. Torch computes in float32 tensors (histogram, min/max, bin positions, norms) with
 * a few float64 steps (Python scalars, the cumsum inside the combine). Every step that decides
 * something discrete — which bin a value falls in, the widened range and the offset of the old
 * histogram in it, the quantile walk of the search and its norm comparisons, the returned
 * range — is computed here with the same float32 roundings (Math.fround) as torch. Two things
 * are done differently on purpose:
 * - The histogram is kept in float64 and not rounded to float32 after each combine (torch
 *   also rounds an intermediate cumulative sum to float32 there). The difference is ~1e-7
 *   relative per bin; a float32 histogram would also stop counting past 2^24 per bin.
 * - Torch 1.13's forward() passes int(min_val)/int(max_val) to torch.histc: values outside
 *   [trunc(min), trunc(max)] are dropped and the bins are then read as spanning [min, max].
 *   That is a bug (PyTorch 2.x passes the float bounds); the float bounds are used here unless
 *   `legacyTorch113IntBounds` is set, which reproduces 1.13 as shipped (for verification).
 * Kept as torch does it: a batch arriving while min == max (e.g. a first batch that was
 * constant) restarts the histogram from that batch, discarding the old counts.
 *
 * Non-finite values (NaN, ±Infinity) are skipped and counted in `skipped`; torch would throw
 * (histc of a non-finite range). Memory is fixed by `bins`: samples are never kept.
 */
import type { Observer, Range } from './observer.js';
import { computeQParams, roundHalfEven, type QDtype, type QParams } from './qparams.js';

export interface HistogramObserverOptions {
  /** Histogram bins (torch: bins). Default 2048. */
  bins?: number;
  /** Upsampling factor used when re-binning the running histogram (torch: upsample_rate). Default 128. */
  upsampleRate?: number;
  dtype: QDtype;
  symmetric?: boolean;
  reduceRange?: boolean;
  /** Reproduce torch 1.13's int()-truncated histc bounds (a bug; see the file comment). */
  legacyTorch113IntBounds?: boolean;
}

const f32 = Math.fround;

/** torch.div(a, b, rounding_mode='floor') for float32 a and b (c10::div_floor_floating). */
function floorDiv32(a: number, b: number): number {
  if (b === 0) return f32(a / b);
  const mod = a % b; // C fmod; exact
  let div = f32(f32(a - mod) / b);
  if (mod !== 0 && b < 0 !== mod < 0) div = f32(div - 1);
  if (div === 0) return a / b < 0 ? -0 : 0;
  let floordiv = Math.floor(div);
  if (f32(div - floordiv) > 0.5) floordiv += 1;
  return floordiv;
}

export class HistogramObserver implements Observer {
  readonly bins: number;
  readonly upsampleRate: number;
  /** Destination bins of the error model: 2^8 for both 8-bit types, as torch (reduce_range does not change it). */
  readonly dstBins = 256;
  readonly options: Readonly<HistogramObserverOptions>;
  /** Values seen, finite or not. */
  seen = 0;
  /** Non-finite values seen and ignored. */
  skipped = 0;

  private hist: Float64Array; // running histogram over [minVal, maxVal]
  private work: Float64Array; // this batch's counts, then the combined histogram (swapped with hist)
  private prefix: Float64Array; // prefix sums for the combine and the search
  private minVal = Infinity;
  private maxVal = -Infinity;
  private readonly legacyBounds: boolean;

  constructor(options: HistogramObserverOptions) {
    const bins = options.bins ?? 2048;
    const up = options.upsampleRate ?? 128;
    if (!Number.isInteger(bins) || bins < 1 || bins > 1 << 24) throw new RangeError(`HistogramObserver: bins must be an integer in 1..2^24, got ${bins}`);
    if (!Number.isInteger(up) || up < 1 || up > 1 << 16) throw new RangeError(`HistogramObserver: upsampleRate must be an integer in 1..65536, got ${up}`);
    if (options.dtype !== 'uint8' && options.dtype !== 'int8') throw new RangeError(`HistogramObserver: dtype must be 'uint8' or 'int8', got ${String(options.dtype)}`);
    this.options = { ...options };
    this.bins = bins;
    this.upsampleRate = up;
    this.legacyBounds = options.legacyTorch113IntBounds === true;
    this.hist = new Float64Array(bins);
    this.work = new Float64Array(bins);
    this.prefix = new Float64Array(bins + 1);
  }

  collect(values: Float32Array): void {
    const n = values.length;
    this.seen += n;
    if (n === 0) return;
    const minVal = this.minVal;
    const maxVal = this.maxVal;

    // One pass when the batch lies inside the running range (most batches after the first
    // few): torch then bins it over that same range and adds, provided _adjust_min_max leaves
    // that range as it is (it does when bins·upsampleRate is a power of two).
    if (!this.legacyBounds && minVal < maxVal && this.adjust(minVal, maxVal)?.max === maxVal) {
      if (this.bin(values, minVal, maxVal, this.work, true) === 0) {
        const hist = this.hist;
        const work = this.work;
        for (let i = 0, nb = this.bins; i < nb; i++) hist[i] += work[i];
        return;
      }
    }

    // Pass 1: the batch's finite min and max. Math.min/max spread NaN and keep ±Infinity;
    // only then is the slower, checking loop needed.
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = values[i];
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
      lo = Infinity;
      hi = -Infinity;
      let bad = 0;
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (v - v !== 0) bad++; // NaN or ±Infinity
        else {
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
      this.skipped += bad;
      if (bad === n) return;
    }
    lo += 0; // -0 → 0
    hi += 0;

    if ((minVal === Infinity && maxVal === -Infinity) || minVal === maxVal) {
      this.minVal = lo;
      this.maxVal = hi;
      this.histc(values, lo, hi, lo, hi, this.hist);
      return;
    }

    const cmin = lo < minVal ? lo : minVal;
    const adjusted = this.adjust(cmin, hi > maxVal ? hi : maxVal);
    if (!adjusted) {
      // Old range too narrow to re-bin (float32 underflow): restart from this batch (torch 2.x
      // also restarts when it cannot combine; 1.13 would fail).
      this.minVal = lo;
      this.maxVal = hi;
      this.histc(values, lo, hi, lo, hi, this.hist);
      return;
    }
    const { max: cmax, downsample, startIdx } = adjusted;
    const work = this.work;
    this.histc(values, cmin, cmax, lo, hi, work);
    const hist = this.hist;
    if (cmin === minVal && cmax === maxVal) {
      for (let i = 0, nb = this.bins; i < nb; i++) work[i] += hist[i];
    } else {
      this.combineInto(work, startIdx, downsample);
    }
    this.hist = work;
    this.work = hist;
    this.minVal = cmin;
    this.maxVal = cmax;
  }

  /**
   * torch's _adjust_min_max for a combined range [cmin, cmax]: widens cmax so that the range
   * is a whole number (downsample) of cells of the old histogram's fine grid (its bin width /
   * upsampleRate), and places the old minimum at cell startIdx. Null when the old range is
   * too narrow for float32 (torch 1.13 would divide by zero or allocate without bound).
   */
  private adjust(cmin: number, cmax: number): { max: number; downsample: number; startIdx: number } | null {
    const fineWidth = f32(f32(this.maxVal - this.minVal) / f32(this.bins * this.upsampleRate));
    const oldSpan = f32(this.bins * fineWidth);
    const newSpan = f32(cmax - cmin);
    const downsample = Math.ceil(f32(newSpan / oldSpan));
    if (!(fineWidth > 0) || !Number.isFinite(downsample) || downsample > 2 ** 40) return null;
    const e = f32(f32(f32(downsample) * oldSpan) - newSpan);
    return {
      max: f32(cmax + e),
      downsample,
      startIdx: roundHalfEven(f32(f32(this.minVal - cmin) / fineWidth)),
    };
  }

  /**
   * _combine_histograms without materializing its bins × downsample array: the old histogram,
   * repeated upsampleRate times per bin, sits at [startIdx, startIdx + bins·up) of a fine grid
   * of bins·downsample cells; every downsample cells make one new bin, divided by up.
   */
  private combineInto(out: Float64Array, startIdx: number, downsample: number): void {
    const bins = this.bins;
    const up = this.upsampleRate;
    const old = this.hist;
    const cum = this.prefix;
    cum[0] = 0;
    for (let j = 0; j < bins; j++) cum[j + 1] = cum[j] + old[j];
    const fineCells = bins * up;
    const upTotal = up * cum[bins];
    // Integral of the fine grid up to and including cell p.
    const integral = (p: number): number => {
      const q = p - startIdx;
      if (q < 0) return 0;
      if (q >= fineCells) return upTotal;
      const j = Math.floor(q / up);
      return up * cum[j] + old[j] * (q - j * up + 1);
    };
    let prev = 0;
    for (let i = 0; i < bins; i++) {
      const cur = integral((i + 1) * downsample - 1);
      out[i] += (cur - prev) / up;
      prev = cur;
    }
  }

  /**
   * torch.histc(values, bins, min=lo, max=hi) into out (overwritten). batchLo/batchHi are the
   * batch's finite min/max, which histc uses when lo == hi.
   */
  private histc(values: Float32Array, lo: number, hi: number, batchLo: number, batchHi: number, out: Float64Array): void {
    let left = this.legacyBounds ? Math.trunc(lo) : lo;
    let right = this.legacyBounds ? Math.trunc(hi) : hi;
    if (left === right) {
      left = batchLo;
      right = batchHi;
    }
    if (left === right) {
      left -= 1;
      right += 1;
    }
    this.bin(values, left, right, out);
  }

  /**
   * histc's binning over float32 edges [left, right] into out (overwritten); returns the number
   * of values outside [left, right] (NaN included), or 1 at the first one if stopOutside.
   * Torch computes the bin as trunc(f32(f32(f32(v - l) · bins) / f32(r - l))) (then clamps
   * bins to the last bin). The float64 t = (v - l) · bins / f32(r - l)
   * is within bins·1.8e-7 of torch's float32 quotient, so trunc(t) is torch's bin whenever t is
   * farther than bins·2^-20 from an integer; values that close to an edge (and anything outside
   * [0, bins)) take the exact float32 path.
   */
  private bin(values: Float32Array, left: number, right: number, out: Float64Array, stopOutside = false): number {
    const l = f32(left);
    const r = f32(right);
    const nb = this.bins;
    const width = f32(r - l);
    const inv = nb / width;
    const last = nb - 1;
    const margin = nb * 2 ** -20;
    const upper = 1 - margin;
    out.fill(0);
    let outside = 0;
    for (let i = 0, n = values.length; i < n; i++) {
      const v = values[i];
      const t = (v - l) * inv;
      const pos = t | 0;
      const frac = t - pos;
      // frac in [margin, upper] excludes t < 0, NaN, ±Infinity and |t| >= 2^31 (wrapped pos).
      if (frac >= margin && frac <= upper && pos < nb) {
        out[pos]++;
        continue;
      }
      if (!(v >= l && v <= r)) {
        outside++; // out of range, NaN, ±Infinity
        if (stopOutside) return outside;
        continue;
      }
      const exact = f32(f32(f32(v - l) * nb) / width) | 0;
      out[exact > last ? last : exact]++;
    }
    return outside;
  }

  /** The range chosen by torch's _non_linear_param_search. Throws before any finite value. */
  decide(): Range {
    if (!(this.minVal <= this.maxVal)) {
      throw new Error(this.seen === 0
        ? 'HistogramObserver.decide(): no values collected yet'
        : `HistogramObserver.decide(): none of the ${this.seen} values collected was finite`);
    }
    const bins = this.bins;
    const hist = this.hist;
    const cSum = this.prefix; // float32-rounded cumulative sums, as torch.cumsum of a float32 tensor
    let acc = 0;
    for (let i = 0; i < bins; i++) {
      acc += hist[i];
      cSum[i] = f32(acc);
    }
    const total = f32(acc);

    const stepsize = 1e-5;
    let alpha = 0;
    let beta = 1;
    let startBin = 0;
    let endBin = bins - 1;
    let normMin = Infinity;
    while (alpha < beta) {
      const nextAlpha = alpha + stepsize;
      const nextBeta = beta - stepsize;
      const loBound = f32(nextAlpha * total);
      const hiBound = f32(nextBeta * total);
      let l = startBin;
      let r = endBin;
      while (l < endBin && cSum[l] < loBound) l++;
      while (r > startBin && cSum[r] > hiBound) r--;
      let nextStart = startBin;
      let nextEnd = endBin;
      if (l - startBin > endBin - r) {
        nextStart = l;
        alpha = nextAlpha;
      } else {
        nextEnd = r;
        beta = nextBeta;
      }
      if (nextStart === startBin && nextEnd === endBin) continue;
      const norm = this.quantizationError(nextStart, nextEnd);
      if (norm > normMin) break;
      normMin = norm;
      startBin = nextStart;
      endBin = nextEnd;
    }
    const binWidth = f32(f32(this.maxVal - this.minVal) / bins);
    return {
      min: f32(this.minVal + f32(binWidth * startBin)),
      max: f32(this.minVal + f32(binWidth * (endBin + 1))),
    };
  }

  /** decide() turned into scale and zero point with the observer's dtype/symmetric/reduceRange. */
  qparams(): QParams {
    return computeQParams(this.decide(), {
      dtype: this.options.dtype,
      symmetric: this.options.symmetric ?? false,
      reduceRange: this.options.reduceRange ?? false,
    });
  }

  /**
   * torch's _compute_quantization_error: the L2 error of quantizing the histogram with
   * [startBin, endBin] mapped onto dstBins uniform bins, element by element in float32.
   */
  private quantizationError(startBin: number, endBin: number): number {
    const bins = this.bins;
    const dstBins = this.dstBins;
    const binWidthD = (this.maxVal - this.minVal) / bins;
    const dstWidthD = (binWidthD * (endBin - startBin + 1)) / dstBins;
    if (dstWidthD === 0) return 0;
    const bw = f32(binWidthD);
    const dbw = f32(dstWidthD);
    const half = f32(dstWidthD / 2);
    const negHalf = f32(-dstWidthD / 2);
    const halfCube = f32(f32(half * half) * half);
    const negHalfCube = f32(f32(negHalf * negHalf) * negHalf);
    const fullBin = f32(f32(halfCube - negHalfCube) / 3);
    const maxDst = dstBins - 1;
    const hist = this.hist;
    let sum = 0;
    for (let i = 0; i < bins; i++) {
      const h = hist[i];
      if (h === 0) continue; // density 0: all three terms are 0
      const begin = f32(f32(i - startBin) * bw);
      const end = f32(begin + bw);
      let dob = floorDiv32(begin, dbw);
      dob = dob < 0 ? 0 : dob > maxDst ? maxDst : dob;
      let doe = floorDiv32(end, dbw);
      doe = doe < 0 ? 0 : doe > maxDst ? maxDst : doe;
      const density = f32(f32(h) / bw);
      const dobCenter = f32(f32(dob + 0.5) * dbw);
      const db = f32(begin - dobCenter);
      let norm = f32(density * f32(f32(halfCube - f32(f32(db * db) * db)) / 3));
      norm = f32(norm + f32(f32(doe - dob - 1) * f32(density * fullBin)));
      const doeCenter = f32(f32(doe * dbw) + half);
      const de = f32(end - doeCenter);
      norm = f32(norm + f32(density * f32(f32(f32(f32(de * de) * de) - negHalfCube) / 3)));
      sum += norm;
    }
    return f32(sum);
  }

  /** A copy of the running histogram and the range its bins span (for tests and diagnostics). */
  snapshot(): { min: number; max: number; histogram: Float64Array } {
    return { min: this.minVal, max: this.maxVal, histogram: this.hist.slice() };
  }

  /** Bytes held in typed arrays: fixed at construction. */
  get memoryBytes(): number {
    return this.hist.byteLength + this.work.byteLength + this.prefix.byteLength;
  }
}
