/**
 * Calibration methods that decide a range from a histogram snapshot (HistogramObserver.snapshot()):
 * entropy (KL divergence, TensorRT-style), percentile and mse. They are pure functions of the
 * snapshot, so one histogram collected during calibration serves every method; `decideRange`
 * is the single entry point that also covers minmax and histogram (PyTorch's L2 search).
 *
 * Common rules
 * - The histogram's bins span [snap.min, snap.max] uniformly. The observer's max may have been
 *   widened past the data when it re-binned (torch's _adjust_min_max, by at most 1/upsampleRate
 *   of the old span per widening), leaving empty bins at the top. Every method here works on the
 *   *data extent*: from the left edge of the first non-empty bin to the right edge of the last
 *   one. That extent contains every value seen and is within one bin of the true min and max
 *   (exactly them when the histogram never had to widen). `minmax` returns it too.
 * - Counts are taken as uniformly spread inside each bin (as torch's L2 search does).
 * - Results lie within the data extent, so within [snap.min, snap.max]; they are never NaN or
 *   inverted. They are NOT widened to include 0 unless `includeZero` is set: computeQParams widens
 *   anyway, and a caller that wants the raw clip points (e.g. to report them) gets them.
 * - A constant tensor (snap.min === snap.max) gives [min, max] for every method.
 * - An empty histogram (nothing finite collected, or all counts 0) throws an Error; malformed
 *   input (min > max, negative or non-finite counts, bad options) throws a RangeError.
 *
 * Which side(s) are searched, for data with both signs and for one-signed data:
 * - One-signed data (all >= 0, e.g. after ReLU; or all <= 0): only the threshold away from 0 is
 *   searched. The quantizer's grid contains 0 whatever the range says, so clipping the side
 *   near 0 cannot buy resolution.
 * - symmetric quantizers (a grid [-a, a]): one magnitude threshold a, chosen on |x|, and the range
 *   returned is [max(lo, -a), min(hi, a)] (so computeQParams' absMax is a).
 * - asymmetric quantizers with signed data: entropy uses one |x| threshold too (see there);
 *   percentile and mse choose the lower and upper clip points independently (a skewed tensor —
 *   a long positive tail, a short negative one — should not have its short side clipped because
 *   the long one is).
 *
 * entropy — TensorRT's calibration (Migacz, "8-bit inference with TensorRT", GTC 2017; the same
 * loop as ONNX Runtime's calibrate.py and pytorch-quantization's _compute_amax_entropy), on the
 * histogram of |x|: bins of the snapshot's width from 0 (the snapshot folded at 0; exact when 0
 * is a bin edge, otherwise the bin across 0 and the misaligned negative bins are split in
 * proportion). For each candidate threshold of i bins: the reference P is the first i bins with
 * everything beyond added to the last one; the candidate Q quantizes those i bins' own counts
 * (outliers excluded) into `levels` values (bin j in level floor(j·levels/i), i.e. linspace
 * edges digitized) and spreads each level's sum evenly over its bins that are non-empty in P
 * (bins empty in P stay empty). Both are smoothed (MXNet/ORT smooth_distribution: empty bins get
 * eps = 1e-4 counts taken evenly from the others; eps shrinks with fractional counts) and
 * normalized; the least KL(P || Q) wins (ties: the larger threshold). As in TensorRT, only
 * thresholds with at least one bin per level are tried.
 * - levels: the quantized values that land on [0, a]. targetBins is the count over the whole
 *   grid, default qmax - qmin + 1 (256; 128 with reduceRange). symmetric: half of it (TensorRT's
 *   128 on |x|). asymmetric: targetBins · a / span, span the width of the grid the clipped range
 *   [max(lo, -a), min(hi, a)] gets (it includes 0): 256 for one-signed data (pytorch-quantization's
 *   unsigned case), 128 for data symmetric about 0, in between for skewed data.
 * - Why one |x| threshold for asymmetric signed data, not two independent clip points: KL over a
 *   sparse histogram is dominated by sampling noise inside each level, and a two-sided window
 *   search (tried: coordinate search over [l, r) windows with the asymmetric grid) happily keeps
 *   one tail of outliers — each isolated outlier bin is reproduced exactly by Q, so wasting range
 *   on it costs no KL — e.g. [-39, 9.4] on Laplace data with ±25..40 outliers. Folding doubles the
 *   counts per bin and is TensorRT's own formulation; ORT ties the two sides as well (a window
 *   symmetric about 0). A short side is still not clipped unless it reaches past a.
 *
 * percentile (default 99.999)
 * - symmetric: the |x| percentile, range [max(lo, -a), min(hi, a)] (ONNX Runtime's percentile
 *   calibrator, whose default is symmetric=True on an |x| histogram; pytorch-quantization too).
 * - asymmetric, signed data: (100 - p)/2 % of the mass clipped from each tail (ORT with
 *   symmetric=False).
 * - asymmetric, one-signed data: the whole (100 - p)% from the far tail (the near side does not
 *   matter; this equals the |x| percentile, i.e. the symmetric convention, on such data).
 * Quantiles are interpolated inside the bin (ORT takes the bin's left edge instead); p = 100 is
 * exactly the data extent.
 *
 * mse — the range whose quantizer (computeQParams with the given dtype/symmetric/reduceRange:
 * the actual scale and rounded zero point) gives the least expected squared error, rounding
 * inside the grid plus clipping outside, integrated exactly over each bin with its count spread
 * uniformly (bin centres alone alias against the level grid: a range whose levels fall on bin
 * centres would look error-free).
 * - symmetric: a 1-D scan of a over 2·bins values up to max(|lo|, |hi|).
 * - asymmetric, one-signed: a 1-D scan of the far clip point over the bin edges.
 * - asymmetric, signed: a coarse 2-D scan (about 48×48 clip pairs on the bin edges), then
 *   coordinate scans over every bin edge until neither side moves.
 */
import type { HistogramObserver } from './histogram.js';
import type { Range } from './observer.js';
import { computeQParams, qRange, type QDtype } from './qparams.js';

export const METHODS = ['minmax', 'histogram', 'entropy', 'percentile', 'mse'] as const;
export type CalibrationMethod = (typeof METHODS)[number];

export function isCalibrationMethod(x: unknown): x is CalibrationMethod {
  return typeof x === 'string' && (METHODS as readonly string[]).includes(x);
}

export const DEFAULT_PERCENTILE = 99.999;

/** What HistogramObserver.snapshot() returns: counts of bins spanning [min, max] uniformly. */
export interface HistogramSnapshot {
  readonly min: number;
  readonly max: number;
  readonly histogram: ArrayLike<number>;
}

export interface RangeOptions {
  /** Widen the result to include 0 (it then may leave [snap.min, snap.max]). Default false. */
  includeZero?: boolean;
}

/** The quantizer the range is for: what entropy and mse optimize against. */
export interface QuantizerOptions extends RangeOptions {
  dtype: QDtype;
  /** Symmetric grid [-a, a] (zero point 0 / 128). Default false (affine). */
  symmetric?: boolean;
  /** One bit less (torch's reduce_range). Default false. */
  reduceRange?: boolean;
}

export interface EntropyOptions extends QuantizerOptions {
  /**
   * Quantized values of the whole grid. Default qmax - qmin + 1: 256, 128 with reduceRange. Q on
   * |x| gets the share that lands on [0, a]: half when symmetric (TensorRT's 128).
   */
  targetBins?: number;
}

export interface PercentileOptions extends RangeOptions {
  /** In (0, 100]. Default 99.999. */
  percentile?: number;
  /** The |x| percentile a, range [max(lo, -a), min(hi, a)] (ORT's default). Default false. */
  symmetric?: boolean;
}

export type MseOptions = QuantizerOptions;

export interface DecideRangeOptions extends EntropyOptions {
  /** For `percentile`. Default 99.999. */
  percentile?: number;
}

/**
 * The range a calibration method chooses from a histogram observer's state. minmax: the data
 * extent of the snapshot (see the file comment); histogram: observer.decide() (the observer's
 * own dtype/symmetric options); entropy, percentile, mse: the functions below on one snapshot.
 */
export function decideRange(method: CalibrationMethod, observer: HistogramObserver, opts: DecideRangeOptions): Range {
  switch (method) {
    case 'minmax':
      return minmaxRange(observer.snapshot(), opts);
    case 'histogram': {
      const r = observer.decide();
      return opts.includeZero ? { min: Math.min(r.min, 0), max: Math.max(r.max, 0) } : r;
    }
    case 'entropy':
      return entropyRange(observer.snapshot(), opts);
    case 'percentile':
      return percentileRange(observer.snapshot(), opts);
    case 'mse':
      return mseRange(observer.snapshot(), opts);
    default:
      throw new RangeError(`unknown calibration method ${JSON.stringify(method)}; expected one of ${METHODS.join(', ')}`);
  }
}

/** The data extent of the snapshot (its min, and the right edge of its last non-empty bin). */
export function minmaxRange(snap: HistogramSnapshot, opts: RangeOptions = {}): Range {
  const prep = prepare(snap, 'minmaxRange');
  return finish(prep, prep.lo, prep.hi, opts);
}

// ---------------------------------------------------------------------------------------------
// Shared preparation

interface Prepared {
  /** Counts of the non-empty span of bins (first to last non-empty bin). */
  h: Float64Array;
  m: number;
  /** cum[k] = h[0] + … + h[k-1]; suf[k] = h[k] + … + h[m-1]. */
  cum: Float64Array;
  suf: Float64Array;
  total: number;
  /** Left edge of h[0] and the bin width. */
  base: number;
  w: number;
  /** Data extent. */
  lo: number;
  hi: number;
  /** snap.min === snap.max: nothing to search. */
  constant: boolean;
}

function prepare(snap: HistogramSnapshot, who: string): Prepared {
  if (snap === null || typeof snap !== 'object' || snap.histogram === undefined || snap.histogram === null) {
    throw new RangeError(`${who}: expected a histogram snapshot { min, max, histogram }`);
  }
  const { min, max, histogram } = snap;
  const n = histogram.length;
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${who}: the histogram has no bins`);
  if (typeof min !== 'number' || typeof max !== 'number' || Number.isNaN(min) || Number.isNaN(max)) {
    throw new RangeError(`${who}: histogram bounds must be numbers, got [${String(min)}, ${String(max)}]`);
  }
  if (min === Infinity && max === -Infinity) throw new Error(`${who}: the histogram is empty (no finite value was collected)`);
  if (!Number.isFinite(min) || !Number.isFinite(max)) throw new RangeError(`${who}: histogram bounds [${min}, ${max}] are not finite`);
  if (min > max) throw new RangeError(`${who}: histogram min ${min} is greater than max ${max}`);
  let total = 0;
  let first = -1;
  let last = -1;
  for (let j = 0; j < n; j++) {
    const c = histogram[j];
    if (!(c >= 0) || c === Infinity) throw new RangeError(`${who}: bin ${j} has count ${c}; counts must be finite and >= 0`);
    if (c > 0) {
      if (first < 0) first = j;
      last = j;
      total += c;
    }
  }
  if (!(total > 0)) throw new Error(`${who}: the histogram is empty (all counts are 0)`);
  const w = (max - min) / n;
  const clampV = (x: number) => (x < min ? min : x > max ? max : x);
  const lo = first === 0 ? min : clampV(min + first * w);
  const hi = last === n - 1 ? max : clampV(min + (last + 1) * w);
  const m = last - first + 1;
  const h = new Float64Array(m);
  for (let k = 0; k < m; k++) h[k] = histogram[first + k];
  const cum = new Float64Array(m + 1);
  const suf = new Float64Array(m + 1);
  for (let k = 0; k < m; k++) cum[k + 1] = cum[k] + h[k];
  for (let k = m - 1; k >= 0; k--) suf[k] = suf[k + 1] + h[k];
  return { h, m, cum, suf, total, base: min + first * w, w, lo, hi, constant: !(lo < hi) || !(w > 0) };
}

/** Edge k (0..m) of the trimmed bins, clamped to the extent; the ends are the extent exactly. */
function edge(p: Prepared, k: number): number {
  if (k <= 0) return p.lo;
  if (k >= p.m) return p.hi;
  const x = p.base + k * p.w;
  return x < p.lo ? p.lo : x > p.hi ? p.hi : x;
}

/** Clamps to the extent, falls back to it on anything not finite or inverted, widens to 0 on request. */
function finish(p: Prepared, min: number, max: number, opts: RangeOptions): Range {
  let a = min < p.lo ? p.lo : min > p.hi ? p.hi : min;
  let b = max < p.lo ? p.lo : max > p.hi ? p.hi : max;
  if (!(a <= b)) {
    // Cannot happen with valid input; never hand back NaN or an inverted range.
    a = p.lo;
    b = p.hi;
  }
  if (opts.includeZero) {
    a = Math.min(a, 0);
    b = Math.max(b, 0);
  }
  return { min: a + 0, max: b + 0 };
}

/** Position of 0 in bin units from base, snapped to an edge when within 1e-6 of a bin. */
function zeroPos(p: Prepared): number {
  const z = -p.base / p.w;
  const rz = Math.round(z);
  return Math.abs(z - rz) < 1e-6 ? rz : z;
}

function checkQuantizer(opts: QuantizerOptions | undefined, who: string): void {
  if (opts === null || typeof opts !== 'object') throw new RangeError(`${who}: options { dtype, symmetric?, reduceRange? } are required`);
  if (opts.dtype !== 'uint8' && opts.dtype !== 'int8') throw new RangeError(`${who}: dtype must be 'uint8' or 'int8', got ${String(opts.dtype)}`);
  if (opts.symmetric && opts.dtype === 'uint8' && opts.reduceRange) {
    throw new RangeError(`${who}: reduceRange is not supported for symmetric uint8 (as computeQParams)`);
  }
}

// ---------------------------------------------------------------------------------------------
// percentile

export function checkPercentile(p: unknown, who = 'percentile'): asserts p is number {
  if (typeof p !== 'number' || !(p > 0 && p <= 100)) {
    throw new RangeError(`${who}: percentile must be a number in (0, 100], got ${String(p)}`);
  }
}

export function percentileRange(snap: HistogramSnapshot, opts: PercentileOptions = {}): Range {
  const pct = opts.percentile ?? DEFAULT_PERCENTILE;
  checkPercentile(pct, 'percentileRange');
  const p = prepare(snap, 'percentileRange');
  if (p.constant || pct === 100) return finish(p, p.lo, p.hi, opts);
  const cut = (p.total * (100 - pct)) / 100;
  if (opts.symmetric) {
    // Smallest a whose |x| tail mass (above a plus below -a) is at most cut; bisection on a
    // monotone function, interpolated within bins.
    const amax = Math.max(-p.lo, p.hi);
    const tail = (a: number) => p.total - massBelow(p, a) + massBelow(p, -a);
    let lo = 0;
    let hi = amax;
    for (let it = 0; it < 200 && hi - lo > amax * 1e-15; it++) {
      const mid = 0.5 * (lo + hi);
      if (tail(mid) <= cut) hi = mid;
      else lo = mid;
    }
    return finish(p, Math.max(p.lo, -hi), Math.min(p.hi, hi), opts);
  }
  let cutLo: number;
  let cutHi: number;
  if (p.lo >= 0) {
    cutLo = 0;
    cutHi = cut;
  } else if (p.hi <= 0) {
    cutLo = cut;
    cutHi = 0;
  } else {
    cutLo = cut / 2;
    cutHi = cut / 2;
  }
  return finish(p, quantileFromBottom(p, cutLo), quantileFromTop(p, cutHi), opts);
}

/** Mass below x, counts spread uniformly in each bin. */
function massBelow(p: Prepared, x: number): number {
  const t = (x - p.base) / p.w;
  if (!(t > 0)) return 0;
  if (t >= p.m) return p.total;
  const k = Math.floor(t);
  return p.cum[k] + p.h[k] * (t - k);
}

/**
 * The lower clip with mass c below it: the largest x with at most c below (the extent's low
 * end for c <= 0). Across an empty gap that is the gap's top, so the range is the smallest one
 * that keeps the mass; within a bin the count is spread uniformly.
 */
function quantileFromBottom(p: Prepared, c: number): number {
  if (!(c > 0)) return p.lo;
  for (let k = 0; k < p.m; k++) {
    if (p.cum[k + 1] > c) return p.base + p.w * (k + (c - p.cum[k]) / p.h[k]);
  }
  return p.hi;
}

/** The upper clip with mass c above it: the smallest x with at most c above (see quantileFromBottom). */
function quantileFromTop(p: Prepared, c: number): number {
  if (!(c > 0)) return p.hi;
  for (let k = p.m - 1; k >= 0; k--) {
    if (p.suf[k] > c) return p.base + p.w * (k + 1 - (c - p.suf[k + 1]) / p.h[k]);
  }
  return p.lo;
}

// ---------------------------------------------------------------------------------------------
// entropy

/**
 * KL(P || Q) of TensorRT's candidate thresholds over one |x| histogram g: the window is the
 * first r bins, with `levels` quantized values over it.
 *
 * `kl` costs O(levels) per threshold instead of O(r), from prefix sums over g, so scanning every
 * threshold of a 2048-bin histogram is about levels·bins rather than bins² (it was most of
 * `auto`'s search time). It relies on the structure of P and Q:
 * - Q is constant over the P-non-empty bins of a level, and 0 on P's empty bins, so the Q side
 *   of Σ p'·log(p'/q') is one log per level: (Σ_level p' ) · log(q'_level).
 * - the P side, Σ (g - t)·log(g - t) over the non-empty bins, with t the smoothing's take (the
 *   same for every bin), is g·log g summed, minus t·Σ(log g + 1), plus the series
 *   Σ_{j>=2} t^j / (j(j-1)) · Σ g^(1-j) — prefix sums again. The series is used only while
 *   t/min(g) <= 1e-2, where eight terms leave an error below 1e-18 of each bin's term; a sparser
 *   window (more than ~100 empty bins per non-empty one) takes the direct per-bin loop.
 * - bin r-1 (where P gathers the tail) and its level are computed directly.
 * `klDirect` is the plain per-bin formula; tests check that both agree.
 */
export class ThresholdKl {
  private static readonly TERMS = 8;
  private readonly suf: Float64Array;
  private readonly total: number;
  /** Prefix sums over i < k: g, non-empty count, log g, g·log g, g^(-j) (j = 1..TERMS-1), min non-empty g. */
  private readonly s0: Float64Array;
  private readonly nz: Float64Array;
  private readonly sLog: Float64Array;
  private readonly sGlog: Float64Array;
  private readonly sInv: Float64Array[];
  private readonly minG: Float64Array;
  private readonly q: Float64Array;
  private readonly lv: Int32Array;
  private levelSum: Float64Array;
  private levelNz: Float64Array;

  constructor(private readonly g: Float64Array) {
    const n = g.length;
    this.suf = new Float64Array(n + 1);
    for (let k = n - 1; k >= 0; k--) this.suf[k] = this.suf[k + 1] + g[k];
    this.total = this.suf[0];
    this.s0 = new Float64Array(n + 1);
    this.nz = new Float64Array(n + 1);
    this.sLog = new Float64Array(n + 1);
    this.sGlog = new Float64Array(n + 1);
    this.sInv = [];
    for (let j = 1; j < ThresholdKl.TERMS; j++) this.sInv.push(new Float64Array(n + 1));
    this.minG = new Float64Array(n + 1);
    this.minG[0] = Infinity;
    for (let i = 0; i < n; i++) {
      const x = g[i];
      const nonEmpty = x !== 0;
      const lx = nonEmpty ? Math.log(x) : 0;
      this.s0[i + 1] = this.s0[i] + x;
      this.nz[i + 1] = this.nz[i] + (nonEmpty ? 1 : 0);
      this.sLog[i + 1] = this.sLog[i] + lx;
      this.sGlog[i + 1] = this.sGlog[i] + x * lx;
      let inv = 1;
      for (let j = 0; j < this.sInv.length; j++) {
        if (nonEmpty) inv /= x;
        this.sInv[j][i + 1] = this.sInv[j][i] + (nonEmpty ? inv : 0);
      }
      this.minG[i + 1] = nonEmpty && x < this.minG[i] ? x : this.minG[i];
    }
    this.q = new Float64Array(n);
    this.lv = new Int32Array(n);
    this.levelSum = new Float64Array(0);
    this.levelNz = new Float64Array(0);
  }

  kl(r: number, levels: number): number {
    const { g, s0, nz } = this;
    const last = r - 1;
    const pLast = g[last] + this.suf[r];
    // Bins before `last` have p = g; `last` has pLast.
    const zerosP = last - nz[last] + (pLast === 0 ? 1 : 0);
    if (zerosP === r) return Infinity;
    const minP = Math.min(this.minG[last], pLast === 0 ? Infinity : pLast);
    // Levels: bin i is in level floor(i·levels/r), so level k starts at ceil(k·r/levels).
    const start = (k: number) => Math.floor((k * r + levels - 1) / levels);
    const lastLevel = levels - 1;
    const lastStart = start(lastLevel);
    // The last level (which holds bin `last`), directly.
    let lastSum = 0;
    let lastNz = 0;
    for (let i = lastStart; i < r; i++) {
      lastSum += g[i];
      if ((i === last ? pLast : g[i]) !== 0) lastNz++;
    }
    const qLast = lastNz > 0 ? lastSum / lastNz : 0;
    // Q is 0 on P's empty bins, and on bin `last` too when its level's window counts are all 0.
    const zerosQ = zerosP + (pLast !== 0 && qLast === 0 ? 1 : 0);
    if (zerosQ === r) return Infinity;
    let minQ = qLast > 0 ? qLast : Infinity;
    let sq = lastSum > 0 && lastNz > 0 ? lastSum : 0;
    // Per-level sums and non-empty counts, kept for the Q side once the smoothing is known.
    if (this.levelSum.length < levels) {
      this.levelSum = new Float64Array(levels);
      this.levelNz = new Float64Array(levels);
    }
    const { levelSum, levelNz } = this;
    for (let k = 0; k < lastLevel; k++) {
      const a = start(k);
      const b = start(k + 1);
      const cnt = (levelNz[k] = nz[b] - nz[a]);
      if (cnt === 0) continue;
      const sum = (levelSum[k] = s0[b] - s0[a]);
      sq += sum;
      const qk = sum / cnt;
      if (qk < minQ) minQ = qk;
    }
    const epsP = zerosP > 0 ? 1e-4 * Math.min(1, minP) : 0;
    const takeP = (epsP * zerosP) / (r - zerosP);
    const epsQ = zerosQ > 0 ? 1e-4 * Math.min(1, minQ) : 0;
    const takeQ = (epsQ * zerosQ) / (r - zerosQ);
    // Q side, levels before the last: (Σ p' over the level's non-empty bins) · log(q'_level).
    let qSide = 0;
    for (let k = 0; k < lastLevel; k++) {
      const cnt = levelNz[k];
      if (cnt === 0) continue;
      const sum = levelSum[k];
      qSide += (sum - cnt * takeP) * Math.log(sum / cnt - takeQ);
    }
    // The last level, per bin (its bins before `last` have g; `last` has pLast).
    let pSideLast = 0;
    for (let i = lastStart; i < r; i++) {
      const pi = i === last ? pLast : g[i];
      if (pi === 0) continue;
      const pt = pi - takeP;
      pSideLast += pt * Math.log(pt);
      qSide += pt * Math.log(qLast === 0 ? epsQ : qLast - takeQ);
    }
    // P side over the bins before the last level.
    const pSide = this.pSide(lastStart, takeP);
    const sum = pSide + pSideLast - qSide + zerosP * (zerosP > 0 ? epsP * Math.log(epsP / epsQ) : 0);
    const sp = this.total;
    return sum / sp + Math.log(sq / sp);
  }

  /** Σ (g_i - t)·log(g_i - t) over the non-empty bins i < end. */
  private pSide(end: number, t: number): number {
    if (t === 0) return this.sGlog[end];
    if (t <= 1e-2 * this.minG[end]) {
      let s = this.sGlog[end] - t * (this.sLog[end] + this.nz[end]);
      let tj = t;
      for (let j = 2; j <= ThresholdKl.TERMS; j++) {
        tj *= t;
        s += (tj / (j * (j - 1))) * this.sInv[j - 2][end];
      }
      if (Number.isFinite(s)) return s;
    }
    let s = 0;
    for (let i = 0; i < end; i++) {
      const x = this.g[i];
      if (x !== 0) s += (x - t) * Math.log(x - t);
    }
    return s;
  }

  /** The same KL, bin by bin: O(r). */
  klDirect(r: number, levels: number): number {
    const { g, q, lv } = this;
    if (this.levelSum.length < levels) {
      this.levelSum = new Float64Array(levels);
      this.levelNz = new Float64Array(levels);
    }
    const { levelSum, levelNz } = this;
    levelSum.fill(0, 0, levels);
    levelNz.fill(0, 0, levels);
    // P: the first r bins, everything beyond added to the last of them (p(i) below).
    const tail = this.suf[r];
    const p = (i: number) => (i === r - 1 ? g[i] + tail : g[i]);
    // Q: the window's own counts summed per level (bin i in level floor(i·levels/r), i.e.
    // linspace(0, r, levels + 1) digitized), spread over the level's bins non-empty in P.
    let k = 0;
    for (let i = 0; i < r; i++) {
      while ((k + 1) * r <= i * levels) k++;
      lv[i] = k;
      levelSum[k] += g[i];
      if (p(i) !== 0) levelNz[k]++;
    }
    let sq = 0;
    let zerosP = 0;
    let zerosQ = 0;
    let minP = Infinity;
    let minQ = Infinity;
    for (let i = 0; i < r; i++) {
      const pi = p(i);
      let qi = 0;
      if (pi !== 0) {
        if (pi < minP) minP = pi;
        qi = levelSum[lv[i]] / levelNz[lv[i]];
      } else zerosP++;
      if (qi !== 0) {
        if (qi < minQ) minQ = qi;
        sq += qi;
      } else zerosQ++;
      q[i] = qi;
    }
    if (zerosP === r || zerosQ === r) return Infinity;
    // Smoothed as MXNet / ONNX Runtime's smooth_distribution (which keeps the sums): empty bins
    // get eps = 1e-4 counts (less when counts are fractional, so that none goes negative), taken
    // evenly from the non-empty ones.
    const epsP = zerosP > 0 ? 1e-4 * Math.min(1, minP) : 0;
    const takeP = (epsP * zerosP) / (r - zerosP);
    const epsQ = zerosQ > 0 ? 1e-4 * Math.min(1, minQ) : 0;
    const takeQ = (epsQ * zerosQ) / (r - zerosQ);
    // Σ p'·log(p'/q') over the bins, then normalized: KL = Σ/sp + log(sq/sp). Q is 0 wherever P
    // is (q is only set on P's non-empty bins).
    let sum = 0;
    let bothEmpty = 0;
    for (let i = 0; i < r; i++) {
      const pi = p(i);
      if (pi === 0) {
        bothEmpty++;
        continue;
      }
      sum += (pi - takeP) * Math.log((pi - takeP) / (q[i] === 0 ? epsQ : q[i] - takeQ));
    }
    if (bothEmpty > 0) sum += bothEmpty * epsP * Math.log(epsP / epsQ);
    const sp = this.total;
    return sum / sp + Math.log(sq / sp);
  }
}

/**
 * The histogram of |x|: bins of the same width starting at 0. A bin lying across the fold
 * position (0 not on an edge) is split in proportion to its parts.
 */
function foldAbs(p: Prepared): Float64Array {
  const z = zeroPos(p);
  const size = Math.ceil(Math.max(z, p.m - z)) + 2;
  const g = new Float64Array(size);
  const put = (a0: number, a1: number, mass: number) => {
    if (mass === 0) return;
    const k = Math.floor(a0);
    if (a1 <= k + 1) g[k] += mass;
    else {
      const f = (k + 1 - a0) / (a1 - a0);
      g[k] += mass * f;
      g[k + 1] += mass * (1 - f);
    }
  };
  for (let j = 0; j < p.m; j++) {
    const c = p.h[j];
    if (c === 0) continue;
    const u = j - z;
    if (u >= 0) put(u, u + 1, c);
    else if (u + 1 <= 0) put(-(u + 1), -u, c);
    else {
      put(0, -u, c * -u);
      put(0, u + 1, c * (u + 1));
    }
  }
  let n = size;
  while (n > 1 && g[n - 1] === 0) n--;
  return g.subarray(0, n);
}

export function entropyRange(snap: HistogramSnapshot, opts: EntropyOptions): Range {
  checkQuantizer(opts, 'entropyRange');
  const { qmin, qmax } = qRange(opts.dtype, opts.reduceRange ?? false);
  const gridLevels = opts.targetBins ?? qmax - qmin + 1;
  if (!Number.isInteger(gridLevels) || gridLevels < 2) {
    throw new RangeError(`entropyRange: targetBins must be an integer >= 2, got ${String(gridLevels)}`);
  }
  const p = prepare(snap, 'entropyRange');
  if (p.constant) return finish(p, p.lo, p.hi, opts);
  const g = foldAbs(p);
  const n = g.length;
  // The bin holding 0 is the spike of every post-ReLU tensor (and of padded or background
  // inputs); left in, it dominates the KL divergence and drives thresholds far too low.
  // NVIDIA's pytorch-quantization entropy calibrator flattens it to its neighbour; so do we.
  if (n > 1) g[0] = g[1];
  const amax = Math.max(-p.lo, p.hi);
  // One-signed data: a threshold below the near end would invert the range.
  const aMin = p.lo >= 0 || p.hi <= 0 ? Math.min(Math.abs(p.lo), Math.abs(p.hi)) : 0;
  const clip = (a: number): Range => ({ min: Math.max(p.lo, -a), max: Math.min(p.hi, a) });
  // Quantized values on [0, a]: the grid's levels times a over the grid's span (which contains 0).
  const levelsAt = (a: number): number => {
    if (opts.symmetric) return Math.max(1, Math.round(gridLevels / 2));
    const r = clip(a);
    return Math.max(1, Math.round((gridLevels * a) / (Math.max(r.max, 0) - Math.min(r.min, 0))));
  };
  const kl = new ThresholdKl(g);
  let best = Infinity;
  let bestA = amax;
  for (let r = n; r >= 1; r--) {
    const a = r === n ? amax : Math.min(amax, r * p.w);
    if (a < aMin) break;
    const levels = levelsAt(a);
    if (r < levels) continue; // TensorRT starts at one bin per level
    const d = kl.kl(r, levels);
    if (d < best) {
      best = d;
      bestA = a;
    }
  }
  const range = clip(bestA);
  return finish(p, range.min, range.max, opts);
}

// ---------------------------------------------------------------------------------------------
// mse

/**
 * Mean squared error of quantizers over the histogram, each bin's count spread uniformly over
 * the bin: a value x goes to level clamp(round(x/s) + zp, qmin, qmax) and back to (level - zp)·s.
 * The error is integrated exactly per level, Σ ∫ (x - v)² over the x that land on it, from
 * cumulative moments of the histogram (in bin units, centred on the data for precision), so one
 * quantizer costs O(levels), not O(bins).
 */
class SqError {
  private readonly c0: Float64Array;
  private readonly c1: Float64Array;
  private readonly c2: Float64Array;
  private readonly cen: number;
  private m0 = 0;
  private m1 = 0;
  private m2 = 0;

  constructor(private readonly p: Prepared) {
    const { h, m } = p;
    this.cen = m / 2;
    this.c0 = new Float64Array(m + 1);
    this.c1 = new Float64Array(m + 1);
    this.c2 = new Float64Array(m + 1);
    for (let j = 0; j < m; j++) {
      const a = j - this.cen;
      this.c0[j + 1] = this.c0[j] + h[j];
      this.c1[j + 1] = this.c1[j] + h[j] * (a + 0.5);
      this.c2[j + 1] = this.c2[j] + h[j] * (a * a + a + 1 / 3);
    }
  }

  /** Moments (count, Σu, Σu²) of the mass below position t (bins from base) into m0, m1, m2. */
  private at(t: number): void {
    const m = this.p.m;
    if (!(t > 0)) {
      this.m0 = this.m1 = this.m2 = 0;
      return;
    }
    if (t >= m) {
      this.m0 = this.c0[m];
      this.m1 = this.c1[m];
      this.m2 = this.c2[m];
      return;
    }
    const k = Math.floor(t);
    const f = t - k;
    const a = k - this.cen;
    const hk = this.p.h[k];
    this.m0 = this.c0[k] + hk * f;
    this.m1 = this.c1[k] + hk * (a * f + 0.5 * f * f);
    this.m2 = this.c2[k] + hk * (a * a * f + a * f * f + (f * f * f) / 3);
  }

  /** Mean squared error for scale s, zero point zp, levels qmin..qmax. */
  mse(s: number, zp: number, qmin: number, qmax: number): number {
    const { base, w, m } = this.p;
    const clampQ = (k: number) => (k < qmin ? qmin : k > qmax ? qmax : k);
    // Levels the data reaches: those of its two ends.
    const kLo = clampQ(Math.floor(base / s + zp + 0.5));
    const kHi = clampQ(Math.floor((base + m * w) / s + zp + 0.5));
    let p0 = 0;
    let p1 = 0;
    let p2 = 0;
    let err = 0;
    for (let k = kLo; k <= kHi; k++) {
      if (k === kHi) this.at(m);
      else this.at(((k + 0.5 - zp) * s - base) / w);
      const d0 = this.m0 - p0;
      const d1 = this.m1 - p1;
      const d2 = this.m2 - p2;
      if (d0 !== 0) {
        const v = ((k - zp) * s - base) / w - this.cen;
        err += d2 - 2 * v * d1 + v * v * d0;
      }
      p0 = this.m0;
      p1 = this.m1;
      p2 = this.m2;
    }
    return Math.max(0, (err * w * w) / this.c0[m]);
  }
}

export function mseRange(snap: HistogramSnapshot, opts: MseOptions): Range {
  checkQuantizer(opts, 'mseRange');
  const p = prepare(snap, 'mseRange');
  if (p.constant) return finish(p, p.lo, p.hi, opts);
  const qopts = { dtype: opts.dtype, symmetric: opts.symmetric ?? false, reduceRange: opts.reduceRange ?? false };
  const { qmin, qmax } = qRange(opts.dtype, qopts.reduceRange);
  const sq = new SqError(p);
  const err = (lo: number, hi: number): number => {
    const qp = computeQParams({ min: lo, max: hi }, qopts);
    return sq.mse(qp.scale, qp.zeroPoint, qmin, qmax);
  };
  const m = p.m;
  const oneSigned = p.lo >= 0 || p.hi <= 0;

  if (qopts.symmetric) {
    const amax = Math.max(-p.lo, p.hi);
    const aMin = oneSigned ? Math.min(Math.abs(p.lo), Math.abs(p.hi)) : 0;
    const K = 2 * m;
    let best = Infinity;
    let bestA = amax;
    for (let k = K; k >= 1; k--) {
      const a = k === K ? amax : (amax * k) / K;
      if (a < aMin) break;
      const e = err(Math.max(p.lo, -a), Math.min(p.hi, a));
      if (e < best) {
        best = e;
        bestA = a;
      }
    }
    return finish(p, Math.max(p.lo, -bestA), Math.min(p.hi, bestA), opts);
  }

  if (p.lo >= 0) {
    let best = Infinity;
    let bestK = m;
    for (let k = m; k >= 1; k--) {
      const e = err(p.lo, edge(p, k));
      if (e < best) {
        best = e;
        bestK = k;
      }
    }
    return finish(p, p.lo, edge(p, bestK), opts);
  }
  if (p.hi <= 0) {
    let best = Infinity;
    let bestK = 0;
    for (let k = 0; k < m; k++) {
      const e = err(edge(p, k), p.hi);
      if (e < best) {
        best = e;
        bestK = k;
      }
    }
    return finish(p, edge(p, bestK), p.hi, opts);
  }

  // Signed data: lower clip on an edge k <= floor(z) (value <= 0), upper on an edge k >= ceil(z).
  const z = zeroPos(p);
  const lMax = Math.max(0, Math.min(m - 1, Math.floor(z)));
  const rMin = Math.min(m, Math.max(1, Math.ceil(z)));
  const memo = new Map<number, number>();
  const errAt = (l: number, r: number): number => {
    const key = l * (m + 1) + r;
    let e = memo.get(key);
    if (e === undefined) {
      e = err(edge(p, l), edge(p, r));
      memo.set(key, e);
    }
    return e;
  };
  const stride = Math.max(1, Math.ceil(Math.max(lMax + 1, m - rMin + 1) / 48));
  let bl = 0;
  let br = m;
  let best = errAt(0, m);
  const ls: number[] = [];
  for (let l = 0; l <= lMax; l += stride) ls.push(l);
  const rs: number[] = [];
  for (let r = m; r >= rMin; r -= stride) rs.push(r);
  for (const l of ls) {
    for (const r of rs) {
      const e = errAt(l, r);
      if (e < best) {
        best = e;
        bl = l;
        br = r;
      }
    }
  }
  for (let round = 0; round < 8; round++) {
    let moved = false;
    for (let r = m; r >= rMin; r--) {
      const e = errAt(bl, r);
      if (e < best) {
        best = e;
        br = r;
        moved = true;
      }
    }
    for (let l = 0; l <= lMax; l++) {
      const e = errAt(l, br);
      if (e < best) {
        best = e;
        bl = l;
        moved = true;
      }
    }
    if (!moved) break;
  }
  return finish(p, edge(p, bl), edge(p, br), opts);
}
