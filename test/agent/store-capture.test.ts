import test, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { DEFAULT_POLICY, sampleHash, splitOf, Store, type CaptureStats, type OfferedSample, type OfferOutcome } from '../../agent/store/index.js';
import { EdgeqError, type ErrorCode } from '../../quant/errors.js';
import { tempDir } from '../helpers/fixtures.js';
import { rng } from '../helpers/random.js';
import { addModel, f32, floats, one, scripted, tempStore } from '../helpers/store.js';

function expectCode(t: ExecutionContext, fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  const e = t.throws(fn);
  t.true(e instanceof EdgeqError, String(e));
  t.is((e as EdgeqError).code, code, e?.message);
  if (message) t.regex(e!.message, message);
}

/** Every valid offered sample lands in exactly one bucket. */
function balanced(s: CaptureStats): boolean {
  return s.seen === s.kept + s.evicted + s.pruned + s.duplicates + s.sampledOut + s.reservoirFull + s.disabled;
}

function keptValues(store: Store, name = 'm'): number[] {
  return [...store.iterateSamples(name)].map((s) => floats(s.tensors[0])[0]);
}

test('the default policy is documented values, and setPolicy validates, merges and persists', (t) => {
  const path = join(tempDir(t, 'edgeq-store-'), 'edgeq.db');
  let store = Store.open(path);
  addModel(store);
  t.deepEqual(DEFAULT_POLICY, { enabled: true, rate: 0.1, maxSamples: 1000, maxBytes: 256 * 1024 * 1024, retentionMs: 30 * 24 * 3600 * 1000 });
  t.deepEqual(store.getPolicy('m'), DEFAULT_POLICY);
  t.deepEqual(store.setPolicy('m', { rate: 0.5, maxSamples: 10 }), { ...DEFAULT_POLICY, rate: 0.5, maxSamples: 10 });
  t.deepEqual(store.setPolicy('m', { enabled: false }), { ...DEFAULT_POLICY, rate: 0.5, maxSamples: 10, enabled: false });
  for (const [patch, re] of [
    [{ rate: 1.5 }, /"rate" must be a number from 0 to 1/],
    [{ rate: -0.1 }, /"rate"/],
    [{ rate: Number.NaN }, /"rate"/],
    [{ rate: '0.5' }, /"rate"/],
    [{ maxSamples: 1.5 }, /"maxSamples" must be a whole number/],
    [{ maxSamples: -1 }, /"maxSamples"/],
    [{ maxBytes: Infinity }, /"maxBytes"/],
    [{ retentionMs: -5 }, /"retentionMs"/],
    [{ enabled: 'yes' }, /"enabled" must be true or false/],
    [{ rates: 1 }, /unknown capture policy key "rates"/],
  ] as const) {
    expectCode(t, () => store.setPolicy('m', patch as never), 'E_ARGUMENT', re);
  }
  expectCode(t, () => store.getPolicy('nope'), 'E_MODEL_UNKNOWN');
  expectCode(t, () => store.setPolicy('nope', { rate: 1 }), 'E_MODEL_UNKNOWN');
  store.close();
  store = Store.open(path);
  t.teardown(() => store.close());
  t.deepEqual(store.getPolicy('m'), { ...DEFAULT_POLICY, rate: 0.5, maxSamples: 10, enabled: false });
});

test('samples whose dtype or shape do not match the model are refused, and nothing of their batch is stored', (t) => {
  const store = tempStore(t);
  addModel(store, 'm', [
    { name: 'image', dtype: 'float32', shape: ['N', 3, 2, 2] },
    { name: 'ids', dtype: 'int64', shape: [-1, 'len'] },
  ]);
  store.setPolicy('m', { rate: 1 });
  const image = (shape = [1, 3, 2, 2], dtype = 'float32', bytes = 48) => ({ name: 'image', dtype, shape, data: new Uint8Array(bytes) });
  const ids = (len = 5) => ({ name: 'ids', dtype: 'int64', shape: [1, len], data: new Uint8Array(8 * len) });
  const good: OfferedSample = { tensors: [image(), ids()], source: 'cam' };
  const cases: Array<[OfferedSample, ErrorCode, RegExp]> = [
    [{ tensors: [image([1, 3, 4, 4], 'float32', 192), ids()], source: 'cam' }, 'E_SHAPE_MISMATCH', /input "image": shape \[1, 3, 4, 4\] does not match the model's \[N, 3, 2, 2\] \(dim 2 must be 2\)/],
    [{ tensors: [image([2, 3, 2, 2], 'float32', 96), ids()], source: 'cam' }, 'E_SHAPE_MISMATCH', /leading dim must be 1/],
    [{ tensors: [image([1, 12], 'float32', 48), ids()], source: 'cam' }, 'E_SHAPE_MISMATCH', /rank 2/],
    [{ tensors: [image([1, 3, 2, 2], 'uint8', 12), ids()], source: 'cam' }, 'E_DTYPE_MISMATCH', /dtype uint8 does not match the model's float32/],
    [{ tensors: [image(), { ...ids(), dtype: 'int32' }], source: 'cam' }, 'E_DTYPE_MISMATCH', /input "ids"/],
    [{ tensors: [image()], source: 'cam' }, 'E_CAPTURE_INVALID', /input "ids" is missing/],
    [{ tensors: [image(), ids(), { name: 'extra', dtype: 'float32', shape: [1], data: new Uint8Array(4) }], source: 'cam' }, 'E_CAPTURE_INVALID', /no input "extra"/],
    [{ tensors: [image(), image(), ids()], source: 'cam' }, 'E_CAPTURE_INVALID', /appears twice/],
    [{ tensors: [image([1, 3, 2, 2], 'float32', 47), ids()], source: 'cam' }, 'E_CAPTURE_INVALID', /47 bytes of data/],
    [{ tensors: [image(), ids()], source: '' }, 'E_CAPTURE_INVALID', /source/],
    [{ tensors: [image(), ids()], source: 'cam', label: 1.5 }, 'E_CAPTURE_INVALID', /label/],
  ];
  let refused = 0;
  for (const [bad, code, re] of cases) {
    expectCode(t, () => store.offerSamples('m', [good, good, bad], () => 0), code, re);
    refused += 3;
    t.is(store.countSamples('m'), 0);
  }
  const e = t.throws(() => store.offerSamples('m', [good, cases[0][0]]));
  t.regex(e!.message, /^model "m" v1, sample 2 of 2, input "image"/);
  refused += 2;
  t.like(store.captureStats('m'), { seen: 0, kept: 0, refused });
  expectCode(t, () => store.offerSamples('unknown', [good]), 'E_MODEL_UNKNOWN', /no model named "unknown"/);
  // Dynamic dims are free: ids of another length is fine.
  t.deepEqual(store.offerSamples('m', [good, { tensors: [ids(9), image()], source: 'cam' }]), ['kept', 'kept']);
  t.deepEqual(store.integrityCheck(), ['ok']);
});

test('a model without an active version captures for its newest version', (t) => {
  const store = tempStore(t);
  store.addModelVersion('m', { kind: 'fp32', path: '/a', sha256: 'a'.repeat(64), sizeBytes: 1, inputs: [{ name: 'x', dtype: 'float32', shape: [1, 1] }] });
  store.addModelVersion('m', { kind: 'fp32', path: '/b', sha256: 'b'.repeat(64), sizeBytes: 1, inputs: [{ name: 'x', dtype: 'float32', shape: [1, 2] }] });
  store.setPolicy('m', { rate: 1 });
  expectCode(t, () => store.offerSamples('m', [one(1)]), 'E_SHAPE_MISMATCH', /v2/);
  t.deepEqual(store.offerSamples('m', [{ tensors: [f32([1, 2])], source: 's' }]), ['kept']);
  store.setActive('m', 1);
  t.deepEqual(store.offerSamples('m', [one(1)]), ['kept']);
});

test('duplicates: same content (in any input order) is kept once; a duplicate of an evicted sample counts as new', (t) => {
  const store = tempStore(t);
  addModel(store, 'm', [{ name: 'a', dtype: 'float32', shape: [1, 'n'] }, { name: 'b', dtype: 'float32', shape: [1, 1] }]);
  store.setPolicy('m', { rate: 1 });
  const s = (x: number, order: 'ab' | 'ba' = 'ab', n = 1): OfferedSample => {
    const a = f32(Array(n).fill(x), 'a');
    const b = f32([x], 'b');
    return { tensors: order === 'ab' ? [a, b] : [b, a], source: 'cam' };
  };
  t.deepEqual(store.offerSamples('m', [s(1), s(1), s(2), s(1, 'ba')]), ['kept', 'duplicate', 'kept', 'duplicate']);
  t.deepEqual(store.offerSamples('m', [s(2)]), ['duplicate']);
  // Same bytes per value, other shape: other content.
  t.deepEqual(store.offerSamples('m', [s(1, 'ab', 2)]), ['kept']);
  t.like(store.captureStats('m'), { seen: 6, kept: 3, duplicates: 3 });
  // The stored tensors are in the model's input order, whatever the order offered.
  t.deepEqual([...store.iterateSamples('m')][0].tensors.map((x) => x.name), ['a', 'b']);

  // Eviction forgets content: with room for one sample, A (key 0.5) is evicted by B (key 0.9),
  // and A offered again draws a new key and is kept.
  addModel(store, 'one');
  store.setPolicy('one', { rate: 1, maxSamples: 1 });
  t.deepEqual(store.offerSamples('one', [one(1), one(2), one(1), one(1)], scripted([0, 0.5, 0, 0.9, 0, 0.95, 0])), ['kept', 'kept', 'kept', 'duplicate']);
  t.deepEqual(keptValues(store, 'one'), [1]);
  t.like(store.captureStats('one'), { seen: 4, kept: 1, evicted: 2, duplicates: 1 });
});

test('the rate is a Bernoulli draw per sample: 8000 offers at rate 0.25 keep 2000 ± 194 (5 standard deviations)', (t) => {
  const store = tempStore(t);
  addModel(store);
  store.setPolicy('m', { rate: 0.25, maxSamples: 100_000 });
  const rand = rng(7);
  const outcomes: OfferOutcome[] = [];
  for (let b = 0; b < 8; b++) outcomes.push(...store.offerSamples('m', Array.from({ length: 1000 }, (_, i) => one(b * 1000 + i)), rand));
  const kept = outcomes.filter((o) => o === 'kept').length;
  t.is(kept + outcomes.filter((o) => o === 'sampled-out').length, 8000);
  t.true(Math.abs(kept - 2000) <= 194, `kept ${kept}`);
  t.like(store.captureStats('m'), { seen: 8000, kept, sampledOut: 8000 - kept });
  store.setPolicy('m', { rate: 0 });
  t.deepEqual(store.offerSamples('m', [one(-1), one(-2)]), ['sampled-out', 'sampled-out']);
  store.setPolicy('m', { rate: 1, enabled: false });
  t.deepEqual(store.offerSamples('m', [one(-1), one(-2)]), ['disabled', 'disabled']);
  expectCode(t, () => store.offerSamples('m', [{ tensors: [f32([1, 2])], source: 's' }]), 'E_SHAPE_MISMATCH', /does not match/);
  const s = store.captureStats('m');
  t.like(s, { kept, disabled: 2, refused: 1 });
  t.true(balanced(s));
});

test('the caps hold exactly after every transaction: samples and bytes, with samples of many sizes', (t) => {
  const store = tempStore(t);
  addModel(store, 'm', [{ name: 'x', dtype: 'float32', shape: [1, 'n'] }]);
  const maxSamples = 40;
  const maxBytes = 3000;
  store.setPolicy('m', { rate: 1, maxSamples, maxBytes });
  const rand = rng(11);
  const sizes = rng(12);
  let full = 0;
  for (let b = 0; b < 60; b++) {
    const batch = Array.from({ length: 1 + Math.floor(sizes() * 30) }, (_, i) => ({ tensors: [f32(Array.from({ length: 1 + Math.floor(sizes() * 60) }, () => b * 1000 + i))], source: 'cam' }));
    store.offerSamples('m', batch, rand);
    const s = store.captureStats('m');
    const stored = [...store.iterateSamples('m')];
    t.is(s.kept, stored.length);
    t.is(s.bytes, stored.reduce((a, x) => a + x.tensors[0].data.byteLength, 0));
    t.true(s.kept <= maxSamples, `batch ${b}: ${s.kept} samples`);
    t.true(s.bytes <= maxBytes, `batch ${b}: ${s.bytes} bytes`);
    t.true(balanced(s));
    if (s.bytes > maxBytes - 240) full++;
  }
  t.true(full > 30, 'the byte cap was reached and held');
  const s = store.captureStats('m');
  t.true(s.evicted > 0 && s.reservoirFull > 0);

  // The count cap alone, with equal sizes: exactly maxSamples once more were offered.
  addModel(store, 'n');
  store.setPolicy('n', { rate: 1, maxSamples: 25 });
  for (let b = 0; b < 10; b++) {
    store.offerSamples('n', Array.from({ length: 7 }, (_, i) => one(b * 7 + i)), rand);
    t.is(store.countSamples('n'), Math.min(25, (b + 1) * 7));
  }
  // Lowering the caps takes effect at once, evicting the smallest keys.
  store.setPolicy('n', { maxSamples: 10 });
  t.is(store.countSamples('n'), 10);
  store.setPolicy('n', { maxBytes: 4 * 3 });
  t.is(store.countSamples('n'), 3);
  t.like(store.captureStats('n'), { kept: 3, bytes: 12 });
  store.setPolicy('n', { maxSamples: 0 });
  t.is(store.countSamples('n'), 0);
  t.deepEqual(store.offerSamples('n', [one(1000)], rand), ['reservoir-full']);
  t.true(balanced(store.captureStats('n')));
});

test('the reservoir keeps exactly the largest keys: 3000 offers, room for 100', (t) => {
  const store = tempStore(t);
  addModel(store);
  store.setPolicy('m', { rate: 1, maxSamples: 100 });
  const draws: number[] = [];
  const base = rng(3);
  const rand = () => {
    const u = base();
    draws.push(u);
    return u;
  };
  for (let b = 0; b < 30; b++) store.offerSamples('m', Array.from({ length: 100 }, (_, i) => one(b * 100 + i)), rand);
  // Per sample (all distinct, rate 1): one draw for the rate, then its key.
  t.is(draws.length, 6000);
  const keys = Array.from({ length: 3000 }, (_, i) => ({ i, key: draws[2 * i + 1] }));
  const top = keys.sort((a, b) => b.key - a.key).slice(0, 100).map((k) => k.i).sort((a, b) => a - b);
  t.deepEqual(keptValues(store).sort((a, b) => a - b), top);
});

// Uniformity: 4 seeds × 20,000 distinct samples through a reservoir of 500 keep 2000 samples.
// Their stream positions, counted in 10 deciles of the stream (expected 200 each), must pass a
// chi-square test with 9 degrees of freedom at α = 0.001: statistic < 27.88. (Sampling without
// replacement makes the counts less variable than the chi-square assumes, so the test is
// conservative.) A reservoir that kept the first or the last samples scores in the thousands.
test('reservoir sampling is uniform over a long stream: chi-square over deciles < 27.88 (9 df, α = 0.001)', (t) => {
  const store = tempStore(t);
  const stream = 20_000;
  const room = 500;
  const counts = Array(10).fill(0) as number[];
  for (const seed of [101, 202, 303, 404]) {
    const name = `m${seed}`;
    addModel(store, name);
    store.setPolicy(name, { rate: 1, maxSamples: room });
    const rand = rng(seed);
    for (let b = 0; b < stream / 1000; b++) {
      store.offerSamples(name, Array.from({ length: 1000 }, (_, i) => one(b * 1000 + i)), rand);
      t.is(store.countSamples(name), Math.min(room, (b + 1) * 1000));
    }
    const kept = keptValues(store, name);
    t.is(new Set(kept).size, room);
    for (const pos of kept) counts[Math.floor((pos / stream) * 10)]++;
    const s = store.captureStats(name);
    t.like(s, { seen: stream, kept: room });
    t.true(balanced(s));
  }
  const expected = (4 * room) / 10;
  const chi2 = counts.reduce((a, c) => a + (c - expected) ** 2 / expected, 0);
  t.log(`decile counts ${counts.join(' ')}, chi-square ${chi2.toFixed(2)}`);
  t.true(chi2 < 27.88, `chi-square ${chi2.toFixed(2)} over deciles ${counts.join(' ')}`);
  // The test has power: keeping the first 2000 positions would fail it.
  const biased = Array(10).fill(0) as number[];
  for (let i = 0; i < 4 * room; i++) biased[Math.floor((i / stream) * 10)]++;
  t.true(biased.reduce((a, c) => a + (c - expected) ** 2 / expected, 0) > 27.88);
});

test('splits are deterministic from the content hash, about 20% holdout, and queryable', (t) => {
  const store = tempStore(t);
  addModel(store);
  store.setPolicy('m', { rate: 1, maxSamples: 10_000 });
  for (let b = 0; b < 5; b++) store.offerSamples('m', Array.from({ length: 1000 }, (_, i) => one(b * 1000 + i)));
  const all = store.countSamples('m');
  const holdout = store.countSamples('m', 'holdout');
  const calibration = store.countSamples('m', 'calibration');
  t.is(all, 5000);
  t.is(holdout + calibration, all);
  // Binomial(5000, 0.2): 1000 ± 5 standard deviations (5 × 28.3).
  t.true(Math.abs(holdout - 1000) <= 142, `holdout ${holdout}`);
  const h = [...store.iterateSamples('m', { split: 'holdout' })];
  t.is(h.length, holdout);
  t.true(h.every((s) => s.split === 'holdout' && splitOf(s.sha256) === 'holdout' && parseInt(s.sha256.slice(0, 8), 16) % 5 === 0));
  t.true([...store.iterateSamples('m', { split: 'calibration', limit: 50 })].every((s) => s.split === 'calibration'));
  // The same content gets the same hash and split in another store.
  const other = tempStore(t);
  addModel(other);
  other.setPolicy('m', { rate: 1 });
  other.offerSamples('m', h.slice(0, 20).map((s) => ({ tensors: s.tensors, source: 'copy' })));
  t.deepEqual([...other.iterateSamples('m')].map((s) => [s.sha256, s.split]), h.slice(0, 20).map((s) => [s.sha256, 'holdout']));
});

test('iterateSamples streams in id order, honours limit, returns whole samples, and lets capture write meanwhile', (t) => {
  const store = tempStore(t);
  addModel(store, 'm', [{ name: 'x', dtype: 'float32', shape: ['N', 2] }, { name: 'y', dtype: 'uint8', shape: ['N', 3] }]);
  store.setPolicy('m', { rate: 1, maxSamples: 1000 });
  const sample = (v: number): OfferedSample => ({ tensors: [f32([v, -v], 'x'), { name: 'y', dtype: 'uint8', shape: [1, 3], data: Uint8Array.of(v % 256, 1, 2) }], source: `src${v % 3}`, label: v % 10, at: 1_700_000_000_000 + v });
  store.offerSamples('m', Array.from({ length: 50 }, (_, i) => sample(i)));
  const seen: number[] = [];
  let written = 0;
  for (const s of store.iterateSamples('m')) {
    seen.push(s.id);
    t.deepEqual(s.tensors.map((x) => [x.name, x.dtype, x.shape]), [['x', 'float32', [1, 2]], ['y', 'uint8', [1, 3]]]);
    const v = floats(s.tensors[0])[0];
    t.deepEqual(floats(s.tensors[0]), [v, -v]);
    t.deepEqual(Array.from(s.tensors[1].data), [v % 256, 1, 2]);
    t.is(s.tensors[1].data.constructor, Uint8Array);
    t.like(s, { source: `src${v % 3}`, label: v % 10, at: 1_700_000_000_000 + v, sha256: sampleHash(s.tensors) });
    // Capture keeps writing while a consumer iterates (no statement stays open between yields).
    if (written < 5) store.offerSamples('m', [sample(1000 + written++)]);
  }
  t.deepEqual(seen, [...seen].sort((a, b) => a - b));
  t.is(seen.length, 55, 'samples added behind the cursor are seen too');
  t.is([...store.iterateSamples('m', { limit: 7 })].length, 7);
  t.is([...store.iterateSamples('m', { limit: 0 })].length, 0);
  t.is([...store.iterateSamples('m', { split: 'holdout', limit: 3 })].length, Math.min(3, store.countSamples('m', 'holdout')));
  expectCode(t, () => store.iterateSamples('nope'), 'E_MODEL_UNKNOWN');
  expectCode(t, () => store.iterateSamples('m', { limit: -1 }), 'E_ARGUMENT');
});

test('retention: pruneSamples drops samples older than each model\'s retention; 0 keeps them forever', (t) => {
  const store = tempStore(t);
  const day = 24 * 3600 * 1000;
  const now = 1_800_000_000_000;
  addModel(store, 'a');
  addModel(store, 'b');
  addModel(store, 'c');
  store.setPolicy('a', { rate: 1 }); // default retention: 30 days
  store.setPolicy('b', { rate: 1, retentionMs: 2 * day });
  store.setPolicy('c', { rate: 1, retentionMs: 0 });
  for (const m of ['a', 'b', 'c']) store.offerSamples(m, [one(1, 's', { at: now - 40 * day }), one(2, 's', { at: now - 10 * day }), one(3, 's', { at: now - 1 * day })]);
  t.is(store.pruneSamples('b', now), 2);
  t.deepEqual(keptValues(store, 'b'), [3]);
  t.is(store.pruneSamples(undefined, now), 1);
  t.deepEqual(keptValues(store, 'a'), [2, 3]);
  t.deepEqual(keptValues(store, 'c'), [1, 2, 3]);
  t.is(store.pruneSamples(undefined, now), 0);
  t.like(store.captureStats('a'), { pruned: 1, kept: 2 });
  t.like(store.captureStats('b'), { pruned: 2, kept: 1 });
  t.true(['a', 'b', 'c'].every((m) => balanced(store.captureStats(m))));
  // A pruned sample's content may be captured again.
  t.deepEqual(store.offerSamples('b', [one(1, 's', { at: now })]), ['kept']);
  expectCode(t, () => store.pruneSamples('nope', now), 'E_MODEL_UNKNOWN');
});
