/**
 * Calibration methods on one histogram snapshot (quant/observe/range-search.ts), each checked
 * against a small independent reference written here (plain loops on the raw samples or on the
 * same bins; nothing shared with the implementation), plus properties every method must hold.
 */
import test from 'ava';
import { rng } from '../helpers/random.js';
import { HistogramObserver } from '../../quant/observe/histogram.js';
import type { Range } from '../../quant/observe/observer.js';
import type { QDtype } from '../../quant/observe/qparams.js';
import {
  METHODS, ThresholdKl, decideRange, entropyRange, isCalibrationMethod, minmaxRange, mseRange, percentileRange, type CalibrationMethod,
} from '../../quant/observe/range-search.js';

// ---------------------------------------------------------------------------------------------
// Deterministic data

function gauss(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}
function laplace(rand: () => number): number {
  const u = rand() - 0.5;
  return -Math.sign(u) * Math.log(1 - 2 * Math.abs(u));
}
/** Adds -M and +M (M = max |x|) so the histogram is symmetric about 0 and 0 is its middle edge. */
function symmetricEnds(xs: number[]): number[] {
  const m = Math.fround(Math.max(...xs.map(Math.abs)));
  return [...xs, -m, m];
}

const N = 20000;
interface Dataset { name: string; data: Float32Array; outliers: boolean }

function make(name: string, seed: number, gen: (rand: () => number, i: number) => number, extra: (xs: number[]) => number[] = (x) => x, outliers = false): Dataset {
  const rand = rng(seed);
  const xs = extra(Array.from({ length: N }, (_, i) => gen(rand, i)));
  return { name, data: Float32Array.from(xs), outliers };
}

const DATA: Dataset[] = [
  make('normal', 1, (r) => gauss(r), symmetricEnds),
  make('laplace+outliers', 2, (r, i) => (i % 1000 === 7 ? (i % 2000 === 7 ? 1 : -1) * (25 + 15 * r()) : laplace(r)), symmetricEnds, true),
  make('relu half-normal', 3, (r) => Math.max(0, gauss(r))),
  make('relu+outliers', 4, (r, i) => (i % 1500 === 11 ? 20 + 10 * r() : Math.max(0, gauss(r))), undefined, true),
  // The added ends put 0 on a bin edge of a 2048-bin histogram, so |x| folds exactly.
  make('uniform(-1,3)', 5, (r) => -1 + 4 * r(), (xs) => [...xs, -1, 3]),
  make('skewed+outliers', 6, (r, i) => (i % 800 === 3 ? 30 + 20 * r() : Math.max(-4, 0.5 + gauss(r))), (xs) => [...xs, -4, 60], true),
];

function observe(data: Float32Array, bins = 2048): HistogramObserver {
  const obs = new HistogramObserver({ dtype: 'uint8', bins });
  obs.collect(data);
  return obs;
}

const binWidth = (obs: HistogramObserver) => {
  const s = obs.snapshot();
  return (s.max - s.min) / s.histogram.length;
};

const QUANTIZERS: Array<{ dtype: QDtype; symmetric: boolean }> = [
  { dtype: 'uint8', symmetric: false },
  { dtype: 'int8', symmetric: false },
  { dtype: 'int8', symmetric: true },
];

// ---------------------------------------------------------------------------------------------
// percentile: order statistics of the raw samples

/**
 * The sample a percentile clip lands next to: with c the mass to clip from the top, the
 * (floor(c)+1)-th largest value (the smallest clip that leaves at most c above). Any histogram
 * estimate of that clip lies in the same bin as this sample.
 */
function topClip(sortedDesc: number[], c: number): number {
  return sortedDesc[Math.min(sortedDesc.length - 1, Math.floor(c))];
}

for (const ds of DATA) {
  test(`percentile matches the sorted samples within one bin: ${ds.name}`, (t) => {
    const obs = observe(ds.data);
    const snap = obs.snapshot();
    const w = binWidth(obs);
    const xs = Array.from(ds.data);
    const desc = [...xs].sort((a, b) => b - a);
    const negAsc = xs.map((x) => -x).sort((a, b) => b - a); // -x descending: x ascending
    const absDesc = xs.map(Math.abs).sort((a, b) => b - a);
    const min = desc[desc.length - 1];
    const max = desc[0];
    let worst = 0;
    const dev = (got: number, want: number) => {
      const d = Math.abs(got - want);
      worst = Math.max(worst, d / w);
      return d;
    };
    for (const p of [90, 99, 99.9, 99.99, 99.999, 100]) {
      const cut = (xs.length * (100 - p)) / 100;
      // ORT symmetric=False on signed data: (100-p)/2 per tail; one-signed data: all from the far tail.
      let wantLo: number;
      let wantHi: number;
      if (min >= 0) {
        wantLo = min;
        wantHi = topClip(desc, cut);
      } else {
        wantLo = -topClip(negAsc, cut / 2);
        wantHi = topClip(desc, cut / 2);
      }
      const got = percentileRange(snap, { percentile: p });
      t.true(dev(got.min, wantLo) <= w * 1.000001, `p=${p} lo ${got.min} vs ${wantLo} (bin ${w})`);
      t.true(dev(got.max, wantHi) <= w * 1.000001, `p=${p} hi ${got.max} vs ${wantHi} (bin ${w})`);
      // ORT symmetric=True: |x| percentile.
      const a = topClip(absDesc, cut);
      const sym = percentileRange(snap, { percentile: p, symmetric: true });
      t.true(dev(sym.max, Math.min(max, a)) <= w * 1.000001, `p=${p} |x| hi ${sym.max} vs ${a}`);
      t.true(dev(sym.min, Math.max(min, -a)) <= w * 1.000001, `p=${p} |x| lo ${sym.min} vs ${-a}`);
    }
    t.log(`worst deviation from the sample quantile: ${worst.toFixed(3)} bins`);
  });
}

// ---------------------------------------------------------------------------------------------
// entropy: TensorRT's loop, written out plainly on the same bins

/** MXNet/ORT smooth_distribution with eps = 1e-4 counts (in place); false if all zero. */
function refSmooth(x: Float64Array): boolean {
  let nz = 0;
  for (const v of x) if (v !== 0) nz++;
  if (nz === 0) return false;
  const eps1 = (1e-4 * (x.length - nz)) / nz;
  for (let i = 0; i < x.length; i++) x[i] = x[i] === 0 ? 1e-4 : x[i] - eps1;
  return true;
}

function refKl(p: Float64Array, q: Float64Array): number {
  let sp = 0;
  let sq = 0;
  for (let i = 0; i < p.length; i++) {
    sp += p[i];
    sq += q[i];
  }
  let d = 0;
  for (let i = 0; i < p.length; i++) {
    const pi = p[i] / sp;
    const qi = q[i] / sq;
    if (pi > 0) d += pi * Math.log(pi / qi);
  }
  return d;
}

/**
 * TensorRT on an |x| histogram: thresholds of i bins from 0, P = the first i bins with the rest
 * added to the last one, Q = those bins' own counts summed per level (linspace(0, i, levels + 1)
 * edges, digitized) and spread over P's non-empty bins; least KL, the last one on ties.
 * Thresholds with fewer bins than levels are skipped. The caller flattens the zero bin first.
 * Returns i.
 */
function tensorRtThreshold(abs: number[], levelsAt: (i: number) => number): number {
  let best = Infinity;
  let bestI = abs.length;
  for (let i = 1; i <= abs.length; i++) {
    const levels = levelsAt(i);
    if (i < levels) continue;
    const P = Float64Array.from(abs.slice(0, i));
    for (let j = i; j < abs.length; j++) P[i - 1] += abs[j];
    const edges: number[] = [];
    for (let k = 0; k <= levels; k++) edges.push((k * i) / levels);
    const level = new Int32Array(i);
    let k = 0;
    for (let j = 0; j < i; j++) {
      while (k + 1 < levels && edges[k + 1] <= j) k++;
      level[j] = k;
    }
    const sums = new Float64Array(levels);
    const counts = new Float64Array(levels);
    for (let j = 0; j < i; j++) {
      sums[level[j]] += abs[j];
      if (P[j] !== 0) counts[level[j]] += 1;
    }
    const Q = new Float64Array(i);
    for (let j = 0; j < i; j++) Q[j] = P[j] !== 0 ? sums[level[j]] / counts[level[j]] : 0;
    const d = refSmooth(P) && refSmooth(Q) ? refKl(P, Q) : Infinity;
    if (d <= best) {
      best = d;
      bestI = i;
    }
  }
  return bestI;
}

for (const ds of DATA) {
  test(`entropy is TensorRT's threshold on the |x| histogram: ${ds.name}`, (t) => {
    const obs = observe(ds.data);
    const snap = obs.snapshot();
    const n = snap.histogram.length;
    const w = binWidth(obs);
    const z = -snap.min / w; // 0 is edge z: fold exactly
    t.true(Number.isInteger(z), `0 at bin edge ${z}`);
    const nAbs = Math.max(z, n - z);
    const abs: number[] = [];
    for (let k = 0; k < nAbs; k++) abs.push((z + k < n ? snap.histogram[z + k] : 0) + (z - 1 - k >= 0 ? snap.histogram[z - 1 - k] : 0));
    // As NVIDIA's pytorch-quantization does: the bin at 0 (the ReLU spike) takes its neighbour's count.
    if (abs.length > 1) abs[0] = abs[1];
    const cases = [
      // asymmetric: 256 levels over the clipped range [max(min, -a), min(max, a)], which contains 0
      { opts: { dtype: 'uint8', symmetric: false } as const, levelsAt: (i: number) => Math.round((256 * i) / (Math.min(i, z) + Math.min(i, n - z))) },
      { opts: { dtype: 'int8', symmetric: true } as const, levelsAt: () => 128 },
    ];
    for (const { opts, levelsAt } of cases) {
      const a = tensorRtThreshold(abs, levelsAt) * w;
      const want = { min: Math.max(snap.min, -a), max: Math.min(snap.max, a) };
      const got = entropyRange(snap, opts);
      t.log(`${JSON.stringify(opts)}: [${got.min.toFixed(4)}, ${got.max.toFixed(4)}]; TensorRT [${want.min.toFixed(4)}, ${want.max.toFixed(4)}]; bin ${w.toFixed(4)}`);
      t.true(Math.abs(got.max - want.max) <= w && Math.abs(got.min - want.min) <= w, JSON.stringify(opts));
      if (ds.outliers) t.true(got.max - got.min < 0.5 * (snap.max - snap.min), `outliers clipped: ${JSON.stringify(got)}`);
    }
  });
}

test('the prefix-sum KL equals the per-bin KL on dense, sparse, fractional and tail-heavy histograms', (t) => {
  const rand = rng(77);
  let worst = 0;
  let compared = 0;
  for (let trial = 0; trial < 40; trial++) {
    const n = 64 + Math.floor(rand() * 700);
    const g = new Float64Array(n);
    const kind = trial % 4;
    for (let i = 0; i < n; i++) {
      const dense = Math.round(5000 * Math.exp(-i / (n / 6)));
      if (kind === 0) g[i] = dense; // dense, decaying
      else if (kind === 1) g[i] = rand() < 0.3 ? dense : 0; // many empty bins
      else if (kind === 2) g[i] = rand() < 0.5 ? rand() * 3 : 0; // fractional counts (fold splits, re-binning)
      else g[i] = rand() < 0.01 || i < 8 ? 1 + Math.floor(rand() * 4) : 0; // very sparse: direct fallback
    }
    if (kind === 3) g[n - 1] = 7; // tail mass lands on bin r-1 of every window
    const kl = new ThresholdKl(g);
    for (const levels of [1, 7, 64, 128]) {
      for (let r = levels; r <= n; r += 1 + Math.floor(rand() * 13)) {
        const fast = kl.kl(r, levels);
        const direct = kl.klDirect(r, levels);
        if (direct === Infinity) {
          t.is(fast, Infinity, `trial ${trial} r ${r} levels ${levels}`);
          continue;
        }
        // KL is a difference of large sums: compare on the scale of max(1, |KL|).
        const err = Math.abs(fast - direct) / Math.max(1, Math.abs(direct));
        worst = Math.max(worst, err);
        compared++;
        if (!(err < 1e-9)) t.fail(`trial ${trial} kind ${kind} r ${r} levels ${levels}: ${fast} vs ${direct}`);
      }
    }
  }
  t.log(`${compared} thresholds compared; worst difference (scaled) ${worst.toExponential(2)}`);
  t.true(compared > 1000);
});

// ---------------------------------------------------------------------------------------------
// mse: brute-force scan of clip ranges, error measured on the raw samples

function refQmax(dtype: QDtype): [number, number] {
  return dtype === 'uint8' ? [0, 255] : [-128, 127];
}

/** Fake-quantization MSE of the samples for the quantizer torch derives from [lo, hi]. */
function sampleMse(xs: Float32Array, lo: number, hi: number, dtype: QDtype, symmetric: boolean): number {
  const [qmin, qmax] = refQmax(dtype);
  const a = Math.min(lo, 0);
  const b = Math.max(hi, 0);
  let scale: number;
  let zp: number;
  if (symmetric) {
    scale = Math.max(-a, b) / ((qmax - qmin) / 2);
    zp = dtype === 'uint8' ? 128 : 0;
  } else {
    scale = (b - a) / (qmax - qmin);
    zp = Math.min(qmax, Math.max(qmin, qmin - Math.round(a / scale)));
  }
  scale = Math.max(scale, 2 ** -23);
  let e = 0;
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i];
    let q = Math.round(x / scale) + zp;
    if (q < qmin) q = qmin;
    else if (q > qmax) q = qmax;
    const d = x - (q - zp) * scale;
    e += d * d;
  }
  return e / xs.length;
}

/**
 * Brute force on the samples: clip points on a grid (symmetric: ±a; one-signed data: the far
 * end; signed data: lo × hi), then the same again on a 10× finer grid around the best.
 */
function bruteMse(xs: Float32Array, dtype: QDtype, symmetric: boolean): { mse: number; range: Range } {
  let min = Infinity;
  let max = -Infinity;
  for (const x of xs) {
    min = Math.min(min, x);
    max = Math.max(max, x);
  }
  let best = { mse: Infinity, range: { min, max } };
  const consider = (lo: number, hi: number) => {
    if (lo > hi) return;
    const e = sampleMse(xs, Math.max(lo, min), Math.min(hi, max), dtype, symmetric);
    if (e < best.mse) best = { mse: e, range: { min: Math.max(lo, min), max: Math.min(hi, max) } };
  };
  if (symmetric || min >= 0) {
    const amax = Math.max(-min, max);
    const at = (a: number) => (symmetric ? consider(-a, a) : consider(min, a));
    const steps = 200;
    for (let k = 1; k <= steps; k++) at((amax * k) / steps);
    const center = Math.max(best.range.max, -best.range.min);
    for (let k = -20; k <= 20; k++) at(center + (amax * k) / steps / 10);
  } else {
    const steps = 30;
    for (let i = 0; i <= steps; i++) for (let k = 0; k <= steps; k++) consider((min * i) / steps, (max * k) / steps);
    const { min: l0, max: h0 } = best.range;
    for (let i = -10; i <= 10; i++) {
      for (let k = -10; k <= 10; k++) consider(l0 + (min * i) / steps / 10, h0 + (max * k) / steps / 10);
    }
  }
  return best;
}

for (const ds of DATA) {
  test(`mse achieves the brute-force optimum on the raw samples within 3%: ${ds.name}`, (t) => {
    const obs = observe(ds.data);
    const snap = obs.snapshot();
    // int8 affine is uint8 affine shifted by 128: the same grid, the same error.
    for (const q of [QUANTIZERS[0], QUANTIZERS[2]]) {
      const got = mseRange(snap, q);
      const mse = sampleMse(ds.data, got.min, got.max, q.dtype, q.symmetric);
      const ref = bruteMse(ds.data, q.dtype, q.symmetric);
      const minmax = sampleMse(ds.data, snap.min, snap.max, q.dtype, q.symmetric);
      t.log(`${JSON.stringify(q)}: [${got.min.toFixed(4)}, ${got.max.toFixed(4)}] mse ${mse.toExponential(4)}; brute [${ref.range.min.toFixed(4)}, ${ref.range.max.toFixed(4)}] ${ref.mse.toExponential(4)}; minmax ${minmax.toExponential(4)}`);
      t.true(mse <= ref.mse * 1.03, `${JSON.stringify(q)}: ${mse} vs brute force ${ref.mse}`);
      t.true(mse <= minmax * 1.000001);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Properties

const METHOD_OPTS = [
  ...QUANTIZERS,
  { dtype: 'uint8' as const, symmetric: false, reduceRange: true },
  { dtype: 'int8' as const, symmetric: true, percentile: 99.9 },
];

test('every method gives a finite, ordered range inside the observed range', (t) => {
  for (const ds of DATA) {
    const obs = observe(ds.data);
    const snap = obs.snapshot();
    for (const opts of METHOD_OPTS) {
      for (const method of METHODS) {
        const r = decideRange(method, obs, opts);
        const where = `${ds.name} ${method} ${JSON.stringify(opts)}: [${r.min}, ${r.max}]`;
        t.true(Number.isFinite(r.min) && Number.isFinite(r.max), where);
        t.true(r.min <= r.max, where);
        t.true(r.min >= snap.min && r.max <= snap.max, where);
      }
    }
  }
});

test('percentile 100 is minmax, and minmax is the data extent', (t) => {
  for (const ds of DATA) {
    const obs = observe(ds.data);
    const mm = decideRange('minmax', obs, { dtype: 'uint8' });
    let lo = Infinity;
    let hi = -Infinity;
    for (const x of ds.data) {
      lo = Math.min(lo, x);
      hi = Math.max(hi, x);
    }
    t.deepEqual(mm, { min: lo, max: hi }, ds.name);
    t.deepEqual(decideRange('percentile', obs, { dtype: 'uint8', percentile: 100 }), mm, ds.name);
    t.deepEqual(percentileRange(obs.snapshot(), { percentile: 100, symmetric: true }), mm, ds.name);
  }
});

test('outliers: entropy and percentile clip well inside minmax, mse inside it', (t) => {
  // MSE keeps outliers that are not very rare: clipping 0.1% of values at 25σ costs more squared
  // error than the coarser grid does. It still trims the extremes.
  for (const ds of DATA.filter((d) => d.outliers)) {
    const obs = observe(ds.data);
    const mm = decideRange('minmax', obs, { dtype: 'uint8' });
    const width = mm.max - mm.min;
    for (const opts of QUANTIZERS) {
      for (const method of ['entropy', 'percentile', 'mse'] as const) {
        const r = decideRange(method, obs, { ...opts, percentile: 99.5 });
        const where = `${ds.name} ${method} ${JSON.stringify(opts)}: [${r.min}, ${r.max}] vs [${mm.min}, ${mm.max}]`;
        t.true(r.max - r.min < (method === 'mse' ? 0.99 : 0.5) * width, where);
      }
    }
  }
});

test('bad percentiles throw RangeError', (t) => {
  const obs = observe(DATA[0].data);
  for (const p of [0, -1, 101, NaN, Infinity, -Infinity, '50' as unknown as number]) {
    t.throws(() => percentileRange(obs.snapshot(), { percentile: p }), { instanceOf: RangeError, message: /percentile must be a number in \(0, 100\]/ }, String(p));
    t.throws(() => decideRange('percentile', obs, { dtype: 'uint8', percentile: p }), { instanceOf: RangeError }, String(p));
  }
  t.notThrows(() => percentileRange(obs.snapshot(), { percentile: 1e-9 }));
});

test('an empty histogram throws for every method; bad options throw RangeError', (t) => {
  const empty = new HistogramObserver({ dtype: 'uint8' });
  for (const method of METHODS) t.throws(() => decideRange(method, empty, { dtype: 'uint8' }), { message: /no values collected|empty/ }, method);
  const zeros = { min: 0, max: 1, histogram: new Float64Array(16) };
  t.throws(() => percentileRange(zeros), { message: /empty/ });
  t.throws(() => mseRange(zeros, { dtype: 'uint8' }), { message: /empty/ });
  const obs = observe(DATA[0].data);
  t.throws(() => decideRange('nope' as CalibrationMethod, obs, { dtype: 'uint8' }), { instanceOf: RangeError, message: /unknown calibration method/ });
  t.throws(() => entropyRange(obs.snapshot(), { dtype: 'int16' as QDtype }), { instanceOf: RangeError });
  t.throws(() => entropyRange(obs.snapshot(), { dtype: 'uint8', targetBins: 1.5 }), { instanceOf: RangeError });
  t.throws(() => mseRange({ min: 1, max: 0, histogram: [1] }, { dtype: 'uint8' }), { instanceOf: RangeError });
  t.throws(() => mseRange({ min: 0, max: 1, histogram: [1, -1] }, { dtype: 'uint8' }), { instanceOf: RangeError });
  t.true(isCalibrationMethod('mse'));
  t.false(isCalibrationMethod('kl'));
});

test('histogram dispatches to the observer L2 search; a constant tensor gives its value', (t) => {
  const obs = observe(DATA[2].data);
  t.deepEqual(decideRange('histogram', obs, { dtype: 'uint8' }), obs.decide());
  const c = new HistogramObserver({ dtype: 'uint8' });
  c.collect(new Float32Array(100).fill(2.5));
  for (const method of METHODS) {
    const r = decideRange(method, c, { dtype: 'uint8' });
    t.deepEqual(r, { min: 2.5, max: 2.5 }, method);
  }
});

test('includeZero widens to 0 only when asked', (t) => {
  const obs = observe(Float32Array.from({ length: 5000 }, (_, i) => 2 + (i % 100) / 100));
  for (const method of METHODS) {
    const r = decideRange(method, obs, { dtype: 'uint8' });
    t.true(r.min >= 2, `${method}: ${r.min}`);
    const z = decideRange(method, obs, { dtype: 'uint8', includeZero: true });
    t.is(z.min, 0, method);
    t.is(z.max, r.max, method);
  }
});

test('a histogram widened across batches: methods work on the data extent, not the padded range', (t) => {
  const rand = rng(9);
  const obs = new HistogramObserver({ dtype: 'uint8' });
  let hi = -Infinity;
  for (let b = 0; b < 8; b++) {
    const batch = Float32Array.from({ length: 2000 }, () => gauss(rand) * (1 + b / 4));
    for (const x of batch) hi = Math.max(hi, x);
    obs.collect(batch);
  }
  const snap = obs.snapshot();
  const w = binWidth(obs);
  const mm = minmaxRange(snap);
  t.true(mm.max >= hi && mm.max - hi <= w, `extent ${mm.max} vs data max ${hi} (snapshot max ${snap.max}, bin ${w})`);
  for (const method of METHODS) {
    const r = decideRange(method, obs, { dtype: 'uint8' });
    t.true(r.max <= mm.max && r.min >= mm.min, method);
  }
});

test('one snapshot serves every method and is left unchanged', (t) => {
  const obs = observe(DATA[5].data);
  const snap = obs.snapshot();
  const t0 = performance.now();
  for (const q of QUANTIZERS) {
    entropyRange(snap, q);
    mseRange(snap, q);
    percentileRange(snap, { symmetric: q.symmetric });
  }
  const ms = performance.now() - t0;
  t.log(`3 quantizers × (entropy, mse, percentile) on 2048 bins: ${ms.toFixed(0)} ms`);
  t.deepEqual(obs.snapshot(), snap); // nothing collected again, nothing changed
});
