import test from 'ava';
import { rng } from '../helpers/random.js';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readNpy } from '../../quant/npy.js';
import { HistogramObserver } from '../../quant/observe/histogram.js';
import { MinMaxObserver } from '../../quant/observe/minmax.js';
import type { Observer, Range } from '../../quant/observe/observer.js';
import {
  computeQParams, dequantizeValue, qRange, quantizeValue, symmetricWeightScale, symmetricWeightScales, type QDtype,
} from '../../quant/observe/qparams.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/observers/', import.meta.url));

interface Expected { min: number; max: number; scale: number; zeroPoint: number }
interface HistExpected extends Expected { histMin: number; histMax: number; histogramFile: string; histogramTotal: number }
interface RefCase {
  description: string;
  batches: string[];
  options: { dtype: QDtype; symmetric: boolean; reduceRange: boolean; bins: number; upsampleRate: number };
  minmax: Expected;
  histogram: HistExpected;
  histogramTorch113: HistExpected;
}
interface Refs { torch: string; cases: Record<string, RefCase> }

const refs = JSON.parse(readFileSync(FIXTURES + 'torch_refs.json', 'utf8')) as Refs;

function loadF32(file: string): Float32Array {
  const { dtype, data } = readNpy(FIXTURES + file);
  if (dtype !== 'float32') throw new Error(`${file}: expected float32, got ${dtype}`);
  return data as Float32Array;
}

const batchesOf = new Map<string, Float32Array[]>();
for (const [name, c] of Object.entries(refs.cases)) batchesOf.set(name, c.batches.map(loadF32));

function feed<T extends Observer>(obs: T, batches: Float32Array[]): T {
  for (const b of batches) obs.collect(b);
  return obs;
}

/** |a - b| relative to the width of the expected range (absolute when the range is empty). */
function rangeDev(got: Range, want: Range): number {
  const width = want.max - want.min;
  const scale = width > 0 ? width : 1;
  return Math.max(Math.abs(got.min - want.min), Math.abs(got.max - want.max)) / scale;
}

const relDev = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);

const RANGE_TOL = 1e-4;
const SCALE_TOL = 1e-5;

for (const [name, c] of Object.entries(refs.cases)) {
  const batches = batchesOf.get(name)!;
  const qopts = { dtype: c.options.dtype, symmetric: c.options.symmetric, reduceRange: c.options.reduceRange };

  test(`minmax matches torch MinMaxObserver: ${name}`, (t) => {
    const got = feed(new MinMaxObserver(), batches).decide();
    t.true(rangeDev(got, c.minmax) <= RANGE_TOL, `range ${JSON.stringify(got)} vs ${JSON.stringify(c.minmax)}`);
    const qp = computeQParams(got, qopts);
    t.true(relDev(qp.scale, c.minmax.scale) <= SCALE_TOL, `scale ${qp.scale} vs ${c.minmax.scale}`);
    t.is(qp.zeroPoint, c.minmax.zeroPoint);
  });

  for (const flavour of ['histogram', 'histogramTorch113'] as const) {
    test(`histogram matches torch HistogramObserver (${flavour}): ${name}`, (t) => {
      const want = c[flavour];
      const obs = feed(new HistogramObserver({
        ...qopts, bins: c.options.bins, upsampleRate: c.options.upsampleRate, legacyTorch113IntBounds: flavour === 'histogramTorch113',
      }), batches);

      // The running histogram itself: same span, same counts.
      const snap = obs.snapshot();
      t.is(snap.min, want.histMin);
      t.is(snap.max, want.histMax);
      const torchHist = loadF32(want.histogramFile);
      let maxBinDiff = 0;
      let total = 0;
      for (let i = 0; i < torchHist.length; i++) {
        maxBinDiff = Math.max(maxBinDiff, Math.abs(snap.histogram[i] - torchHist[i]));
        total += snap.histogram[i];
      }
      // Torch keeps the histogram in float32 and rounds it after every combine; ours is float64.
      t.true(maxBinDiff <= 1e-6 * want.histogramTotal, `max |bin difference| ${maxBinDiff}`);
      // Torch's float32 rounding in _combine_histograms loses a little mass (growing: 1.2e-5 of
      // the total); ours keeps every value, unless 1.13's int() bounds dropped it or a batch
      // restarted the histogram because the range so far was a single value (constant cases).
      t.true(Math.abs(total - want.histogramTotal) <= 1e-4 * want.histogramTotal, `total ${total} vs ${want.histogramTotal}`);
      if (flavour === 'histogram' && !name.startsWith('constant')) {
        const count = batches.reduce((n, b) => n + b.length, 0);
        t.true(Math.abs(total - count) <= 1e-9 * count, `total ${total} vs ${count} values`);
      }

      const got = obs.decide();
      const dev = rangeDev(got, want);
      t.log(`range dev ${dev.toExponential(2)} of the range; max bin diff ${maxBinDiff.toExponential(2)}`);
      t.true(dev <= RANGE_TOL, `range ${JSON.stringify(got)} vs [${want.min}, ${want.max}]`);
      const qp = obs.qparams();
      t.deepEqual(qp, computeQParams(got, qopts));
      t.true(relDev(qp.scale, want.scale) <= SCALE_TOL, `scale ${qp.scale} vs ${want.scale}`);
      t.is(qp.zeroPoint, want.zeroPoint);
    });
  }
}

// Normal samples (Box-Muller) from the shared deterministic generator.
function normals(rand: () => number, n: number, mean: number, sd: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - rand();
    out[i] = mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  }
  return out;
}

test('decide() is a sub-range of what was observed and qparams represent it with 0 exact', (t) => {
  const rand = rng(7);
  const shapes: Array<[number, number]> = [[0, 1], [3, 0.5], [-2, 4], [0.01, 0.001]];
  for (const [mean, sd] of shapes) {
    for (const dtype of ['uint8', 'int8'] as const) {
      for (const symmetric of [false, true]) {
        for (const reduceRange of [false, true]) {
          const obs = new HistogramObserver({ dtype, symmetric, reduceRange });
          let lo = Infinity;
          let hi = -Infinity;
          for (let b = 0; b < 4; b++) {
            const x = normals(rand, 3000, mean * (1 + b / 3), sd * (1 + b / 2));
            for (const v of x) {
              lo = Math.min(lo, v);
              hi = Math.max(hi, v);
            }
            obs.collect(x);
          }
          const r = obs.decide();
          const span = obs.snapshot();
          const what = `${mean},${sd} ${dtype} sym=${symmetric} rr=${reduceRange}: [${r.min}, ${r.max}] of [${lo}, ${hi}]`;
          t.true(r.min <= r.max, what);
          t.true(r.min >= lo, what);
          t.is(span.min, lo);
          t.true(span.max >= hi, what); // the running range is widened upwards only
          t.true(r.max <= span.max, what);
          if (symmetric && dtype === 'uint8' && reduceRange) {
            t.throws(() => obs.qparams());
            continue;
          }
          const qp = obs.qparams();
          const { qmin, qmax } = qRange(dtype, reduceRange);
          t.true(qp.zeroPoint >= qmin && qp.zeroPoint <= qmax, what);
          t.is(dequantizeValue(quantizeValue(0, qp, qmin, qmax), qp), 0, what);
          // Rounding the zero point to an integer moves the grid by up to scale/2.
          const tol = qp.scale * (0.5 + 1e-6);
          if (!symmetric) {
            t.true(dequantizeValue(qmin, qp) <= Math.min(r.min, 0) + tol, what);
            t.true(dequantizeValue(qmax, qp) >= Math.max(r.max, 0) - tol, what);
          }
        }
      }
    }
  }
});

test('histogram memory is fixed by the number of bins, not by the batches seen', (t) => {
  const rand = rng(11);
  const obs = new HistogramObserver({ dtype: 'uint8', bins: 2048 });
  obs.collect(normals(rand, 5000, 0, 1));
  const after1 = obs.memoryBytes;
  t.is(obs.snapshot().histogram.length, 2048);
  for (let b = 1; b < 100; b++) obs.collect(normals(rand, 5000, Math.sin(b), 1 + b / 10));
  t.is(obs.memoryBytes, after1);
  t.is(obs.snapshot().histogram.length, 2048);
  t.true(after1 <= 3 * 2049 * 8);
  t.is(obs.seen, 100 * 5000);
  const total = obs.snapshot().histogram.reduce((a, b) => a + b, 0);
  t.true(Math.abs(total - 100 * 5000) < 1e-6 * 100 * 5000, `histogram total ${total}`);
});

test('non-finite values are skipped, counted, and do not change the histogram', (t) => {
  const rand = rng(3);
  const clean = [normals(rand, 4000, 0.5, 1), normals(rand, 4000, 0, 2)];
  const dirty = clean.map((b, k) => {
    const d = new Float32Array(b.length + 6);
    d.set(b, 3);
    d[0] = NaN;
    d[1] = Infinity;
    d[2] = -Infinity;
    d[b.length + 3] = NaN;
    d[b.length + 4] = k ? -Infinity : Infinity;
    d[b.length + 5] = NaN;
    return d;
  });
  const a = feed(new HistogramObserver({ dtype: 'uint8' }), clean);
  const b = new HistogramObserver({ dtype: 'uint8' });
  b.collect(new Float32Array([NaN, Infinity, -Infinity])); // all non-finite: nothing to see yet
  t.throws(() => b.decide(), { message: /none of the 3 values collected was finite/ });
  feed(b, dirty);
  t.is(b.skipped, 3 + 12);
  t.is(b.seen, 3 + 8012);
  t.deepEqual(b.snapshot(), a.snapshot());
  t.deepEqual(b.decide(), a.decide());
  for (const v of b.snapshot().histogram) t.true(Number.isFinite(v));
});

test('decide() before any collect throws a clear error', (t) => {
  t.throws(() => new HistogramObserver({ dtype: 'uint8' }).decide(), { message: /no values collected yet/ });
  t.throws(() => new MinMaxObserver().decide(), { message: /no finite values/ });
  const empty = new HistogramObserver({ dtype: 'int8' });
  empty.collect(new Float32Array(0));
  t.throws(() => empty.decide(), { message: /no values collected yet/ });
});

test('constructor rejects bad options', (t) => {
  t.throws(() => new HistogramObserver({ dtype: 'uint8', bins: 0 }), { instanceOf: RangeError });
  t.throws(() => new HistogramObserver({ dtype: 'uint8', upsampleRate: 1.5 }), { instanceOf: RangeError });
  t.throws(() => new HistogramObserver({ dtype: 'uint16' as QDtype }), { instanceOf: RangeError });
});

test('computeQParams: torch conventions', (t) => {
  // expected values printed by torch 1.13's MinMaxObserver on the tensor [min, max]
  const cases: Array<[number, number, QDtype, boolean, boolean, number, number]> = [
    [0.5, 2.55, 'uint8', false, false, 0.009999999776482582, 0], // range widened to include 0
    [-1, 1, 'uint8', false, false, 0.007843137718737125, 127], // -1/scale = -127.49999: zp 127, not 128
    [-1, 1, 'int8', false, false, 0.007843137718737125, -1],
    [-1, 1, 'uint8', false, true, 0.015748031437397003, 64],
    [-1, 1, 'int8', false, true, 0.015748031437397003, 0],
    [-3, 1, 'int8', true, false, 0.0235294122248888, 0],
    [-3, 1, 'uint8', true, false, 0.0235294122248888, 128],
    [-3, 1, 'int8', true, true, 0.04724409431219101, 0],
  ];
  for (const [min, max, dtype, symmetric, reduceRange, scale, zeroPoint] of cases) {
    t.deepEqual(computeQParams({ min, max }, { dtype, symmetric, reduceRange }), { scale, zeroPoint }, `${min},${max} ${dtype} ${symmetric} ${reduceRange}`);
  }
  t.throws(() => computeQParams({ min: -1, max: 1 }, { dtype: 'uint8', symmetric: true, reduceRange: true }), { message: /symmetric uint8/ });
  // an empty range gets float32 eps as scale
  t.deepEqual(computeQParams({ min: 0, max: 0 }, { dtype: 'uint8', symmetric: false }), { scale: 2 ** -23, zeroPoint: 0 });
  t.throws(() => computeQParams({ min: 1, max: 0 }, { dtype: 'uint8', symmetric: false }), { instanceOf: RangeError });
  t.throws(() => computeQParams({ min: NaN, max: 0 }, { dtype: 'uint8', symmetric: false }), { instanceOf: RangeError });
  const qp = { scale: 0.5, zeroPoint: 10 };
  t.is(quantizeValue(1.25, qp, 0, 255), 12); // 2.5 rounds half to even
  t.is(quantizeValue(-100, qp, 0, 255), 0);
  t.is(quantizeValue(1000, qp, 0, 255), 255);
});

test('symmetric int8 weight scales (ONNX Runtime convention)', (t) => {
  const w = new Float32Array([0.5, -1.27, 0.1, 0, 0, 0, 2.54, 1, -2]);
  const s = symmetricWeightScales(w, 3);
  t.deepEqual(Array.from(s), [Math.fround(1.27 / 127), 1, Math.fround(Math.fround(2.54) / 127)]);
  const r = symmetricWeightScales(w, 3, { reduceRange: true });
  t.deepEqual(Array.from(r), [Math.fround(Math.fround(1.27) / 64), 1, Math.fround(Math.fround(2.54) / 64)]);
  t.is(symmetricWeightScale(w), Math.fround(Math.fround(2.54) / 127));
  t.is(symmetricWeightScale(new Float32Array(4)), 1);
  t.throws(() => symmetricWeightScales(w, 4), { instanceOf: RangeError });
  t.throws(() => symmetricWeightScales(new Float32Array([1, NaN]), 1), { instanceOf: RangeError });
  // every weight lands inside [-127, 127] with zero point 0
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < 3; i++) {
      const q = Math.round(w[c * 3 + i] / s[c]);
      t.true(q >= -127 && q <= 127);
    }
  }
});

test('MinMaxObserver skips NaN and ±Infinity and counts them', (t) => {
  const o = new MinMaxObserver();
  o.collect(new Float32Array([1, NaN, -Infinity, -2, Infinity, 3]));
  t.deepEqual(o.decide(), { min: -2, max: 3 });
  t.is(o.skipped, 3);
  t.is(o.seen, 6);
});
