/**
 * `edgeq eval` (quant/evaluate.ts): accuracy, agreement, output error and per-layer error, each
 * checked against a plain recomputation from whole-model outputs, plus bad input.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { evaluate, type EvaluateResult } from '../../quant/evaluate.js';
import { accuracy, agreement, argmaxRows, firstOutput } from '../../quant/eval.js';
import { quantize, profileWith } from '../../quant/index.js';
import { NpyFile, readNpy, writeNpy } from '../../quant/npy.js';
import { encodeModel, readModel } from '../../quant/onnx/model.js';
import { sqnrDb } from '../../quant/pipeline.js';
import { CLI, FMNIST, ROOT, tempDir } from '../helpers/fixtures.js';
import { buildModel, floatInput, makeNode } from '../helpers/models.js';

const MOBILENET = join(ROOT, 'test/fixtures/fmnist-mobilenet/model.onnx');
const data = new Map([['', FMNIST.test]]);

async function int8Of(t: Parameters<typeof tempDir>[0], model: string): Promise<string> {
  const out = join(tempDir(t), 'int8.onnx');
  await quantize({ model, calib: new Map([['', FMNIST.calib]]), out, profile: profileWith('fbgemm') });
  return out;
}

async function outputsOf(model: string, count: number): Promise<Float32Array> {
  const f = NpyFile.open(FMNIST.test);
  try {
    return (await firstOutput(model, new Map([['', f]]), count)).data;
  } finally {
    f.close();
  }
}

test('a model compared with itself: exact agreement, no error, and labelled top-1/top-5', async (t) => {
  const r = await evaluate({ model: FMNIST.model, compare: FMNIST.model, data, labels: FMNIST.labels });
  t.is(r.samples, 1000);
  t.is(r.classes, 10);
  t.is(r.agreement, 1);
  t.is(r.model.top1, r.compare!.top1);
  const labels = readNpy(FMNIST.labels).data as BigInt64Array;
  const want = accuracy(argmaxRows(await outputsOf(FMNIST.model, 1000), 1000), labels);
  t.is(r.model.top1, want);
  t.true(r.model.top5! >= r.model.top1! && r.model.top5! <= 1);
  t.is(r.outputs!.length, 1);
  t.is(r.outputs![0].sqnrDb, Infinity);
  t.is(r.outputs![0].maxAbsError, 0);
  t.is(r.outputs![0].cosine, 1);
  t.deepEqual(r.outputs![0].sampleShape, [10]);
});

test('fp32 vs int8: agreement, top-1 and output SQNR equal a recomputation from whole outputs', async (t) => {
  const q = await int8Of(t, FMNIST.model);
  const r = await evaluate({ model: FMNIST.model, compare: q, data, labels: FMNIST.labels, count: 400, batch: 7 });
  t.is(r.samples, 400);
  const a = await outputsOf(FMNIST.model, 400);
  const b = await outputsOf(q, 400);
  const labels = Array.from(readNpy(FMNIST.labels).data as BigInt64Array).slice(0, 400);
  t.is(r.agreement, agreement(argmaxRows(a, 400), argmaxRows(b, 400)));
  t.is(r.compare!.top1, accuracy(argmaxRows(b, 400), labels));
  t.true(Math.abs(r.outputs![0].sqnrDb - sqnrDb(a, b)) < 1e-6, `${r.outputs![0].sqnrDb} vs ${sqnrDb(a, b)}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  t.is(r.outputs![0].maxAbsError, max);
  t.true(r.outputs![0].cosine > 0.99 && r.outputs![0].cosine <= 1);
});

test('--layers lists every quantized tensor of the MobileNet fixture, worst first, and names the worst', async (t) => {
  const q = await int8Of(t, MOBILENET);
  const r: EvaluateResult = await evaluate({ model: MOBILENET, compare: q, data, layers: true, count: 200 });
  const layers = r.layers!;
  t.true(layers.length >= 15, `${layers.length} layers`);
  const fp32Tensors = new Set(readModel(MOBILENET).graph!.node.flatMap((n) => n.output).concat('input'));
  for (const l of layers) t.true(fp32Tensors.has(l.tensor), l.tensor);
  for (let i = 1; i < layers.length; i++) t.true(layers[i - 1].sqnrDb <= layers[i].sqnrDb);
  t.true(Number.isFinite(layers[0].sqnrDb) && layers[0].sqnrDb < layers[layers.length - 1].sqnrDb);
  // The model input is quantized once, with nothing upstream: the cleanest tensor of all.
  const input = layers.find((l) => l.tensor === 'input')!;
  t.is(input.opType, 'graph input');
  t.true(input.sqnrDb > layers[0].sqnrDb + 5, `input ${input.sqnrDb} dB, worst ${layers[0].sqnrDb} dB`);
  t.log(`worst layer: ${layers[0].tensor} (${layers[0].opType}) ${layers[0].sqnrDb.toFixed(1)} dB; best ${layers[layers.length - 1].tensor} ${layers[layers.length - 1].sqnrDb.toFixed(1)} dB`);
});

test('memory does not grow with the sample count (10,000 and 20,000 samples stream)', async (t) => {
  const dir = tempDir(t);
  const test1k = readNpy(FMNIST.test);
  const big = new Float32Array(test1k.data.length * 20);
  for (let k = 0; k < 20; k++) big.set(test1k.data as Float32Array, k * test1k.data.length);
  const bigPath = join(dir, 'big.npy');
  writeNpy(bigPath, big, [20000, ...test1k.shape.slice(1)]);
  // Peak RSS of a fresh process per run, 10,000 vs 20,000 samples through two models. (From 1,000
  // to 5,000 samples RSS still climbs about 13 MiB while V8's heap and ORT's arenas settle; past
  // that it is flat.)
  const script = join(dir, 'run.mjs');
  writeFileSync(script, `import { evaluate } from ${JSON.stringify(join(ROOT, 'dist/quant/evaluate.js'))};
const r = await evaluate({ model: process.argv[2], compare: process.argv[2], data: new Map([['', process.argv[3]]]), count: Number(process.argv[4]) });
console.log(JSON.stringify({ samples: r.samples, maxRss: process.resourceUsage().maxRSS * 1024 }));`);
  const run = (count: number) => {
    const p = spawnSync(process.execPath, [script, FMNIST.model, bigPath, String(count)], { encoding: 'utf8' });
    t.is(p.status, 0, p.stderr);
    return JSON.parse(p.stdout) as { samples: number; maxRss: number };
  };
  const small = run(10000);
  const large = run(20000);
  t.is(large.samples, 20000);
  const growth = large.maxRss - small.maxRss;
  t.log(`peak RSS: ${(small.maxRss / 2 ** 20).toFixed(0)} MiB at 10,000 samples, ${(large.maxRss / 2 ** 20).toFixed(0)} MiB at 20,000 (data file ${(big.byteLength / 2 ** 20).toFixed(0)} MiB)`);
  // Holding the data would add the 30 MiB the second half of the file holds.
  t.true(growth < 8 * 2 ** 20, `grew by ${(growth / 2 ** 20).toFixed(1)} MiB`);
});

function cli(...args: string[]) {
  return spawnSync(process.execPath, [CLI, 'eval', ...args], { encoding: 'utf8' });
}

test('CLI: text output names the models, the agreement and the worst layers', async (t) => {
  const q = await int8Of(t, FMNIST.model);
  const r = cli('--model', FMNIST.model, '--compare', q, '--data', FMNIST.test, '--labels', FMNIST.labels, '--layers', '--count', '100', '--top', '3');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /top-1 agreement: \d+\.\d%/);
  t.regex(r.stdout, /per-layer error, worst first \(3 of \d+\)/);
  t.regex(r.stdout, /logits\s+\[N, 10\]/);
});

test('bad input: one clear error, exit 1, JSON with --json', async (t) => {
  const dir = tempDir(t);
  // 999 labels for 1000 samples
  const labels = readNpy(FMNIST.labels).data as BigInt64Array;
  const short = join(dir, 'short.npy');
  writeNpy(short, labels.slice(0, 999), [999]);
  // a model with the same input but a different output name
  const other = join(dir, 'other.onnx');
  writeFileSync(other, encodeModel(buildModel([makeNode('Flatten', ['input'], ['scores'], 'flatten')], [floatInput('input', ['N', 1, 28, 28])], [floatInput('scores', ['N', 784])], [])));
  const cases: Array<[string[], string, RegExp]> = [
    [['--model', FMNIST.model, '--data', FMNIST.test, '--labels', short], 'E_SHAPE_MISMATCH', /999 labels for 1000 data samples/],
    [['--model', FMNIST.model, '--compare', other, '--data', FMNIST.test], 'E_MODEL_MISMATCH', /different outputs/],
    [['--model', FMNIST.model, '--compare', FMNIST.model, '--data', FMNIST.test, '--layers'], 'E_MODEL_UNSUPPORTED', /--layers needs a QDQ model/],
    [['--model', FMNIST.model, '--data', FMNIST.test, '--layers'], 'E_ARGUMENT', /--compare/],
    [['--model', FMNIST.model, '--data', FMNIST.test, '--count', 'ten'], 'E_ARGUMENT', /--count must be a positive integer, got ten/],
    [['--model', join(dir, 'missing.onnx'), '--data', FMNIST.test], 'E_FILE_NOT_FOUND', /missing\.onnx/],
    [['--model', FMNIST.model, '--data', FMNIST.labels], 'E_DTYPE_MISMATCH', /does not fit model input/],
  ];
  for (const [args, code, message] of cases) {
    const text = cli(...args);
    t.is(text.status, 1, `${args.join(' ')}: ${text.stderr}`);
    t.regex(text.stderr, message);
    t.is(text.stderr.trim().split('\n').length, 1, text.stderr);
    const json = cli(...args, '--json');
    t.is(json.status, 1);
    const body = JSON.parse(json.stdout) as { ok: boolean; error: { code: string; message: string } };
    t.false(body.ok);
    t.is(body.error.code, code, `${args.join(' ')}: ${body.error.message}`);
  }
});
