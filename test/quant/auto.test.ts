import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { quantize, METHODS, type QuantizeOptions } from '../../quant/index.js';
import { EdgeqError } from '../../quant/errors.js';
import { writeModel } from '../../quant/onnx/model.js';
import { writeNpy } from '../../quant/npy.js';
import { chooseProfile, localCpu } from '../../agent/detect.js';
import { CLI, FMNIST, ROOT, tempDir } from '../helpers/fixtures.js';
import { NpyFile } from '../../quant/npy.js';
import { firstOutput } from '../../quant/eval.js';
import { sqnrDb } from '../../quant/pipeline.js';
import { buildModel, floatInput, makeNode, makeTensor, randomFloats } from '../helpers/models.js';

const profile = chooseProfile(localCpu()).profile;

test('auto tries every method × granularity on held-out samples and keeps the best', async (t) => {
  const dir = tempDir(t);
  const r = await quantize({ model: FMNIST.model, calib: new Map([['', FMNIST.calib]]), out: join(dir, 'auto.onnx'), profile, method: 'auto', calibCount: 150 });
  t.is(r.candidates!.length, METHODS.length * 2);
  t.deepEqual([...new Set(r.candidates!.map((c) => c.method))].sort(), [...METHODS].sort());
  t.is(r.method, r.candidates![0].method);
  t.is(r.perChannel, r.candidates![0].perChannel);
  t.is(r.heldOut!.samples, 30);
  t.is(r.calibCount, 120);
  t.is(r.heldOut!.metric, 'agreement');
  for (const c of r.candidates!) t.true(c.agreement >= 0 && c.agreement <= 1 && Number.isFinite(c.sqnrDb));
  t.true(existsSync(r.outPath));
  t.false('Conv' in r.floatOps);
});

test('auto with labels scores by top-1 accuracy', async (t) => {
  const dir = tempDir(t);
  // The test images have labels; use them as the calibration set for this check.
  const r = await quantize({ model: FMNIST.model, calib: new Map([['', FMNIST.test]]), labels: FMNIST.labels, out: join(dir, 'auto.onnx'), profile, method: 'auto', calibCount: 100 });
  t.is(r.heldOut!.metric, 'top1');
  t.true(r.heldOut!.fp32! > 0.7);
  t.true(r.candidates!.every((c) => typeof c.accuracy === 'number'));
});

/**
 * Two MatMuls: x → mm1 → h → mm2 → logits. Feature 15 of x is an outlier (±200) that mm1 drops,
 * so quantizing x wipes out the features the logits depend on, while h is well-behaved
 * (`hOutlier` false) or carries the outlier on too (`hOutlier` true).
 */
function outlierModel(dir: string, hOutlier: boolean): Pick<QuantizeOptions, 'model' | 'calib'> {
  const F = 16, K = 10, N = 200;
  const w1 = new Float32Array(F * F);
  for (let i = 0; i < F; i++) w1[i * F + i] = i === F - 1 && !hOutlier ? 0 : 1;
  const w2 = randomFloats(F * K, 3);
  for (let k = 0; k < K; k++) w2[(F - 1) * K + k] = 0;
  const m = buildModel(
    [makeNode('MatMul', ['x', 'W1'], ['h'], 'mm1'), makeNode('MatMul', ['h', 'W2'], ['logits'], 'mm2')],
    [floatInput('x', ['N', F])],
    [floatInput('logits', ['N', K])],
    [makeTensor('W1', w1, [F, F]), makeTensor('W2', w2, [F, K])],
  );
  const x = randomFloats(N * F, 7, 1);
  for (let n = 0; n < N; n++) x[n * F + F - 1] = n % 2 ? 200 : -200;
  writeModel(m, join(dir, 'm.onnx'));
  writeNpy(join(dir, 'x.npy'), x, [N, F]);
  return { model: join(dir, 'm.onnx'), calib: new Map([['', join(dir, 'x.npy')]]) };
}

test('--max-drop puts the op that loses the most SQNR back to float', async (t) => {
  const dir = tempDir(t);
  const r = await quantize({ ...outlierModel(dir, false), out: join(dir, 'q.onnx'), profile, method: 'minmax', maxDrop: 5 });
  t.is(r.fallback!.length, 1);
  t.is(r.fallback![0].node, 'mm1');
  t.true(r.heldOut!.dropPoints <= 5, `drop ${r.heldOut!.dropPoints}`);
  t.is(r.floatOps.MatMul, 1);
  t.true(existsSync(r.outPath));
});

test('--max-drop that cannot be met fails with E_ACCURACY_BUDGET and writes nothing', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'q.onnx');
  const err = await t.throwsAsync(quantize({ ...outlierModel(dir, true), out, profile, method: 'minmax', maxDrop: 5 }));
  t.true(err instanceof EdgeqError);
  t.is((err as EdgeqError).code, 'E_ACCURACY_BUDGET');
  t.regex(err!.message, /within 5 points/);
  t.false(existsSync(out));
});

test('bad options: unknown method, percentile outside (0, 100], negative --max-drop', async (t) => {
  const dir = tempDir(t);
  const base = { model: FMNIST.model, calib: new Map([['', FMNIST.calib]]), out: join(dir, 'q.onnx'), profile };
  for (const [opts, re] of [
    [{ method: 'kl' as never }, /unknown calibration method "kl"/],
    [{ method: 'percentile' as const, percentile: 0 }, /percentile/],
    [{ method: 'percentile' as const, percentile: 100.5 }, /percentile/],
    [{ maxDrop: -1 }, /--max-drop/],
  ] as const) {
    const err = await t.throwsAsync(quantize({ ...base, ...opts }));
    t.is((err as EdgeqError).code, 'E_ARGUMENT');
    t.regex(err!.message, re);
  }
  t.false(existsSync(join(dir, 'q.onnx')));
  const cli = (args: string[]) => spawnSync(process.execPath, [CLI, 'quantize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--out', join(dir, 'q.onnx'), ...args], { encoding: 'utf8' });
  const unknown = cli(['--method', 'kl']);
  t.is(unknown.status, 2);
  t.regex(unknown.stderr, /Invalid values/);
  const pct = cli(['--method', 'percentile', '--percentile', '101', '--json']);
  t.is(pct.status, 1);
  t.is(JSON.parse(pct.stdout).error.code, 'E_ARGUMENT');
  const drop = cli(['--max-drop', '-0.5']);
  t.is(drop.status, 1);
  t.regex(drop.stderr, /--max-drop must be 0 or more/);
  const profileBad = cli(['--profile', 'tflite']);
  t.is(profileBad.status, 2);
  t.false(existsSync(join(dir, 'q.onnx')));
});

test('bias correction shifts Conv/Gemm biases and brings the depthwise fixture closer to fp32', async (t) => {
  const dir = tempDir(t);
  const model = join(ROOT, 'test/fixtures/fmnist-mobilenet/model.onnx');
  const common = { model, calib: new Map([['', FMNIST.calib]]), profile: { ...profile, perChannel: false, reduceRange: true }, method: 'minmax' as const, calibCount: 100 };
  const plain = await quantize({ ...common, out: join(dir, 'plain.onnx') });
  const corrected = await quantize({ ...common, out: join(dir, 'bc.onnx'), biasCorrection: true });
  t.is(plain.biasCorrection, undefined);
  t.is(corrected.biasCorrection!.length, 18, 'every Conv and the Gemm');
  t.true(corrected.biasCorrection!.some((b) => b.maxShift > 0));
  const data = NpyFile.open(FMNIST.test);
  t.teardown(() => data.close());
  const files = new Map([['', data]]);
  const ref = await firstOutput(model, files, 200);
  const a = sqnrDb(ref.data, (await firstOutput(plain.outPath, files, 200)).data);
  const b = sqnrDb(ref.data, (await firstOutput(corrected.outPath, files, 200)).data);
  t.true(b > a + 1, `logit SQNR ${a.toFixed(2)} dB → ${b.toFixed(2)} dB`);
});
