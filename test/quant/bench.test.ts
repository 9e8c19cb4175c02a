import test, { type ExecutionContext } from 'ava';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildFeeds, randomTensor } from '../../quant/bench-inputs.js';
import { benchInChild, modelSizeBytes, type BenchOptions, type BenchResult } from '../../quant/bench-process.js';
import { EdgeqError, type ErrorCode } from '../../quant/errors.js';
import type { InputInfo } from '../../quant/feed.js';
import { writeNpy } from '../../quant/npy.js';
import { DT } from '../../quant/onnx/tensor.js';
import { readModel, writeModel } from '../../quant/onnx/model.js';
import { FMNIST, tempDir } from '../helpers/fixtures.js';
import { buildModel, floatInput, makeNode, makeTensor, randomFloats } from '../helpers/models.js';

/**
 * out = Gather(table, ids) + x: ids int64 [N, L], x float32 [N, L, 4], table 10×4 (or `rows`×4).
 * L is dynamic, so random inputs need --shape.
 */
function gatherAddModel(dir: string, rows = 10): string {
  const path = join(dir, `gather-add-${rows}.onnx`);
  const model = buildModel(
    [makeNode('Gather', ['table', 'ids'], ['emb'], 'gather', { axis: 0 }), makeNode('Add', ['emb', 'x'], ['out'], 'add')],
    [floatInput('ids', ['N', 'L'], DT.INT64), floatInput('x', ['N', 'L', 4])],
    [floatInput('out', ['N', 'L', 4])],
    [makeTensor('table', randomFloats(rows * 4, 3), [rows, 4])],
  );
  writeModel(model, path);
  return path;
}

/** The invariants every result must satisfy; timings are never compared with thresholds. */
function checkResult(t: ExecutionContext, r: BenchResult, opts: { runs: number; warmup: number; batch: number; threads: number; model: string }): void {
  t.is(r.model, opts.model);
  t.is(r.runs, opts.runs);
  t.is(r.warmup, opts.warmup);
  t.is(r.batch, opts.batch);
  t.is(r.threads, opts.threads);
  for (const k of ['meanMs', 'minMs', 'p50Ms', 'p90Ms', 'p99Ms', 'throughput', 'loadMs', 'peakRssBytes', 'baseRssBytes', 'sizeBytes'] as const) {
    t.is(typeof r[k], 'number', k);
    t.true(Number.isFinite(r[k]), `${k} = ${r[k]}`);
  }
  t.true(r.minMs <= r.p50Ms && r.p50Ms <= r.p90Ms && r.p90Ms <= r.p99Ms, `min ${r.minMs} p50 ${r.p50Ms} p90 ${r.p90Ms} p99 ${r.p99Ms}`);
  t.true(r.minMs <= r.meanMs, `min ${r.minMs} mean ${r.meanMs}`);
  t.true(r.minMs >= 0 && r.loadMs >= 0 && r.throughput > 0);
  t.true(r.peakRssBytes > 10 * 2 ** 20, `peak RSS ${r.peakRssBytes}`);
  t.true(r.baseRssBytes > 0 && r.baseRssBytes <= r.peakRssBytes, `base ${r.baseRssBytes} peak ${r.peakRssBytes}`);
  t.true(Number.isInteger(r.peakRssBytes));
}

async function expectBenchError(t: ExecutionContext, opts: BenchOptions, code: ErrorCode, message: RegExp): Promise<void> {
  const e = await t.throwsAsync(benchInChild(opts));
  t.true(e instanceof EdgeqError, String(e));
  t.is((e as EdgeqError).code, code, e?.message);
  t.regex(e!.message, message);
}

// Serial tests run before the concurrent ones, so changing NODE_OPTIONS here reaches no other test's child.
test.serial('a benchmark process that dies without a result gives E_RUNTIME with its stderr, and no hang', async (t) => {
  const dir = tempDir(t);
  const preload = join(dir, 'die.cjs');
  writeFileSync(preload, "process.stderr.write('simulated crash in the benchmark process\\n'); process.exit(3);\n");
  const before = process.env.NODE_OPTIONS;
  process.env.NODE_OPTIONS = `${before ?? ''} --require ${preload}`.trim();
  try {
    await expectBenchError(t, { model: FMNIST.model, runs: 2, warmup: 0 }, 'E_RUNTIME', /exited with code 3 without a result: simulated crash in the benchmark process/);
  } finally {
    if (before === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = before;
  }
});

test('fixture CNN with random inputs: stats hold their invariants, size is the file size, RSS is the child\'s', async (t) => {
  const progress: string[] = [];
  const r = await benchInChild({ model: FMNIST.model, runs: 25, warmup: 3, onProgress: (stage, done, total) => progress.push(`${stage} ${done}/${total}`) });
  checkResult(t, r, { model: FMNIST.model, runs: 25, warmup: 3, batch: 1, threads: 1 });
  t.is(r.sizeBytes, statSync(FMNIST.model).size);
  t.true(r.spin);
  t.deepEqual(r.inputs, [{ name: 'input', shape: [1, 1, 28, 28], dtype: 'float32', source: 'random' }]);
  // The last report of each stage is always sent.
  t.true(progress.includes('warmup 3/3'), progress.join(', '));
  t.true(progress.includes('run 25/25'), progress.join(', '));
  t.log(`fixture CNN, batch 1: peak RSS ${(r.peakRssBytes / 2 ** 20).toFixed(1)} MiB (${(r.baseRssBytes / 2 ** 20).toFixed(1)} MiB before loading), this process ${(process.memoryUsage().rss / 2 ** 20).toFixed(1)} MiB`);
});

test('fixture CNN with --data: the first `batch` samples, several threads, no spinning', async (t) => {
  const r = await benchInChild({ model: FMNIST.model, batch: 8, threads: 2, runs: 10, warmup: 1, spin: false, data: new Map([['', FMNIST.test]]) });
  checkResult(t, r, { model: FMNIST.model, runs: 10, warmup: 1, batch: 8, threads: 2 });
  t.false(r.spin);
  t.deepEqual(r.inputs, [{ name: 'input', shape: [8, 1, 28, 28], dtype: 'float32', source: 'data' }]);
  const named = await benchInChild({ model: FMNIST.model, runs: 1, warmup: 0, data: new Map([['input', FMNIST.test]]) });
  t.deepEqual(named.inputs.map((i) => [i.source, i.shape]), [['data', [1, 1, 28, 28]]]);
});

test('sizeBytes counts the external data file a model references', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'ext.onnx');
  writeModel(readModel(FMNIST.model), path, { externalDataThresholdBytes: 1024 });
  const expected = statSync(path).size + statSync(`${path}.data`).size;
  t.is(modelSizeBytes(path), expected);
  const r = await benchInChild({ model: path, runs: 2, warmup: 0 });
  t.is(r.sizeBytes, expected);
  t.true(r.sizeBytes > statSync(path).size);
});

test('a dynamic non-batch dimension needs a shape; with one, ints and floats are made up and --data mixes in', async (t) => {
  const dir = tempDir(t);
  const model = gatherAddModel(dir);
  await expectBenchError(t, { model, runs: 1, warmup: 0 }, 'E_ARGUMENT', /model input "ids" \[N, L\] has a dynamic dimension 1 \("L"\): pass --shape ids=1,<L>/);

  const r = await benchInChild({ model, runs: 5, warmup: 1, shapes: new Map([['ids', [2, 5]], ['x', [2, 5, 4]]]) });
  checkResult(t, r, { model, runs: 5, warmup: 1, batch: 2, threads: 1 });
  t.deepEqual(r.inputs, [
    { name: 'ids', shape: [2, 5], dtype: 'int64', source: 'random' },
    { name: 'x', shape: [2, 5, 4], dtype: 'float32', source: 'random' },
  ]);

  // x from a file (its shape sets L), ids made up; --batch takes the first 2 of 3 samples.
  const xs = join(dir, 'x.npy');
  writeNpy(xs, randomFloats(3 * 7 * 4, 5), [3, 7, 4]);
  const mixed = await benchInChild({ model, batch: 2, runs: 3, warmup: 0, data: new Map([['x', xs]]), shapes: new Map([['ids', [2, 7]]]) });
  t.deepEqual(mixed.inputs, [
    { name: 'ids', shape: [2, 7], dtype: 'int64', source: 'random' },
    { name: 'x', shape: [2, 7, 4], dtype: 'float32', source: 'data' },
  ]);

  await expectBenchError(t, { model, runs: 1, warmup: 0, data: new Map([['', xs]]) }, 'E_ARGUMENT', /the model has 2 inputs \(ids, x\): name the input, as --data NAME=/);
  await expectBenchError(t, { model, runs: 1, warmup: 0, shapes: new Map([['nope', [1, 2]]]) }, 'E_ARGUMENT', /--shape names input "nope", which the model does not have \(inputs: ids, x\)/);
  await expectBenchError(t, { model, runs: 1, warmup: 0, shapes: new Map([['ids', [1, 2, 3]]]) }, 'E_SHAPE_MISMATCH', /has 3 dimensions, model input "ids" \[N, L\] has 2/);
});

test('data that does not fit the model: shape, dtype, too few samples', async (t) => {
  const dir = tempDir(t);
  const wide = join(dir, 'wide.npy');
  writeNpy(wide, new Float32Array(4 * 28 * 27), [4, 1, 28, 27]);
  await expectBenchError(t, { model: FMNIST.model, runs: 1, warmup: 0, data: new Map([['', wide]]) }, 'E_SHAPE_MISMATCH', /wide\.npy: shape \[4, 1, 28, 27\] does not fit model input "input" \[N, 1, 28, 28\]: axis 3 is 27, the model needs 28/);
  const flat = join(dir, 'flat.npy');
  writeNpy(flat, new Float32Array(4 * 784), [4, 784]);
  await expectBenchError(t, { model: FMNIST.model, runs: 1, warmup: 0, data: new Map([['', flat]]) }, 'E_SHAPE_MISMATCH', /flat\.npy: shape \[4, 784\] does not fit/);
  const ints = join(dir, 'ints.npy');
  writeNpy(ints, new Int32Array(2 * 784), [2, 1, 28, 28]);
  await expectBenchError(t, { model: FMNIST.model, runs: 1, warmup: 0, data: new Map([['', ints]]) }, 'E_DTYPE_MISMATCH', /ints\.npy: dtype int32 does not fit model input "input" of type float32/);
  const few = join(dir, 'few.npy');
  writeNpy(few, new Float32Array(3 * 784), [3, 1, 28, 28]);
  await expectBenchError(t, { model: FMNIST.model, batch: 4, runs: 1, warmup: 0, data: new Map([['', few]]) }, 'E_SHAPE_MISMATCH', /few\.npy holds 3 samples, a batch of 4 needs 4/);
  await expectBenchError(t, { model: FMNIST.model, runs: 1, warmup: 0, data: new Map([['', join(dir, 'missing.npy')]]) }, 'E_FILE_NOT_FOUND', /missing\.npy/);
});

test('missing or invalid model, bad counts: clean errors before any process starts', async (t) => {
  const dir = tempDir(t);
  await expectBenchError(t, { model: join(dir, 'missing.onnx') }, 'E_FILE_NOT_FOUND', /file not found: .*missing\.onnx/);
  const junk = join(dir, 'junk.onnx');
  writeFileSync(junk, 'this is not a model');
  await expectBenchError(t, { model: junk }, 'E_MODEL_INVALID', /junk\.onnx is not an ONNX model/);
  await expectBenchError(t, { model: FMNIST.model, runs: 0 }, 'E_ARGUMENT', /runs must be a positive integer, got 0/);
  await expectBenchError(t, { model: FMNIST.model, runs: Number('abc') }, 'E_ARGUMENT', /runs must be a positive integer, got NaN/);
  await expectBenchError(t, { model: FMNIST.model, warmup: -1 }, 'E_ARGUMENT', /warmup must be a whole number, 0 or more, got -1/);
  await expectBenchError(t, { model: FMNIST.model, batch: 1.5 }, 'E_ARGUMENT', /batch must be a positive integer, got 1.5/);
});

test('an ONNX Runtime failure in the child comes back as E_RUNTIME', async (t) => {
  // Random ids are in [0, 10); a 3-row table makes most of them out of range.
  const model = gatherAddModel(tempDir(t), 3);
  await expectBenchError(t, { model, runs: 1, warmup: 0, shapes: new Map([['ids', [1, 64]], ['x', [1, 64, 4]]]) }, 'E_RUNTIME', /ONNX Runtime failed running the model/);
});

const FMNIST_INPUT: InputInfo[] = [{ name: 'input', type: 'float32', shape: ['N', 1, 28, 28] }];

test('buildFeeds: random data is deterministic and roughly standard normal; a fixed batch wins over none', (t) => {
  const a = buildFeeds(FMNIST_INPUT, { batch: 16 });
  const b = buildFeeds(FMNIST_INPUT, { batch: 16 });
  const da = a.feeds.input.data as Float32Array;
  t.deepEqual(da, b.feeds.input.data as Float32Array);
  t.deepEqual(a.feeds.input.dims, [16, 1, 28, 28]);
  t.is(a.batch, 16);
  const mean = da.reduce((s, v) => s + v, 0) / da.length;
  const sd = Math.sqrt(da.reduce((s, v) => s + (v - mean) ** 2, 0) / da.length);
  t.true(Math.abs(mean) < 0.05 && Math.abs(sd - 1) < 0.05, `mean ${mean} sd ${sd}`);
  t.notDeepEqual(buildFeeds(FMNIST_INPUT, { batch: 16, seed: 2 }).feeds.input.data as Float32Array, da);

  const fixed: InputInfo[] = [{ name: 'x', type: 'float32', shape: [4, 3] }];
  t.is(buildFeeds(fixed).batch, 4);
  const e = t.throws(() => buildFeeds(fixed, { batch: 2 }));
  t.is((e as EdgeqError).code, 'E_ARGUMENT');
  t.regex(e!.message, /fixed batch of 4 \(input "x" is \[4, 3\]\): --batch 2 does not fit/);
  // Without --batch, a --shape override sets the batch.
  t.is(buildFeeds(FMNIST_INPUT, { shapes: new Map([['', [3, 1, 28, 28]]]) }).batch, 3);
});

test('randomTensor: every numeric ONNX type; ints small and non-negative; bools 0/1', (t) => {
  for (const type of ['float32', 'float64', 'float16', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'bool']) {
    const x = randomTensor(type, [2, 50], 7);
    t.is(x.type as string, type);
    t.deepEqual(x.dims, [2, 50]);
    t.is(x.size, 100);
  }
  const ints = randomTensor('int64', [1000], 1).data as BigInt64Array;
  t.true(ints.every((v) => v >= 0n && v < 10n));
  t.true(new Set(ints).size > 1);
  const bools = randomTensor('bool', [1000], 1).data as Uint8Array;
  t.true(bools.every((v) => v === 0 || v === 1) && bools.some((v) => v === 1) && bools.some((v) => v === 0));
  const e = t.throws(() => randomTensor('string', [1], 1));
  t.is((e as EdgeqError).code, 'E_MODEL_UNSUPPORTED');
});
