import test from 'ava';
import { existsSync, readdirSync, writeFileSync, copyFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { quantize, profileWith, type QuantizeResult } from '../../quant/index.js';
import { EdgeqError, type ErrorCode } from '../../quant/errors.js';
import { readModel, writeModel, encodeModel } from '../../quant/onnx/model.js';
import { NpyFile, writeNpy } from '../../quant/npy.js';
import { predictTop1, agreement, accuracy } from '../../quant/eval.js';
import { readNpy } from '../../quant/npy.js';
import { openSession, ort } from '../../quant/runtime.js';
import { foldBatchNorm } from '../../quant/passes/fold-bn.js';
import { foldConstantNodes, foldInitializerIdentities } from '../../quant/passes/constants.js';
import { FMNIST, CLI, tempDir } from '../helpers/fixtures.js';
import { chooseProfile, localCpu } from '../../agent/detect.js';
import { buildModel, floatInput, makeNode, makeTensor, randomFloats } from '../helpers/models.js';

// The profile this CPU calls for: on x86 without VNNI that means reduce_range, without which
// u8×s8 products saturate in ORT's AVX2 kernels and int8 results drift.
const fbgemm = chooseProfile(localCpu()).profile.name === 'fbgemm' ? chooseProfile(localCpu()).profile : profileWith('fbgemm');

async function quantizeFixture(dir: string, extra: Partial<Parameters<typeof quantize>[0]> = {}): Promise<QuantizeResult> {
  return quantize({ model: FMNIST.model, calib: new Map([['', FMNIST.calib]]), out: join(dir, 'int8.onnx'), profile: fbgemm, calibCount: 200, ...extra });
}

async function runOnce(model: string | Uint8Array, feeds: Record<string, ort.Tensor>): Promise<Float32Array> {
  const s = await openSession(model, { threads: 1 });
  try {
    const out = await s.run(feeds);
    return out[s.outputNames[0]].data as Float32Array;
  } finally {
    await s.release();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

test('fixture CNN: every Conv and Gemm runs as an int8 kernel in ORT and predictions agree with fp32', async (t) => {
  const dir = tempDir(t);
  const r = await quantizeFixture(dir, { method: 'histogram' });
  t.true(existsSync(r.outPath));
  for (const op of ['Conv', 'Gemm', 'MatMul', 'FusedConv']) t.false(op in r.floatOps, `${op} still runs in float`);
  t.is(r.int8Ops.QLinearConv, 8);
  t.is(r.int8Ops.QGemm, 1);
  t.is(r.int8Ops.QLinearAdd, 3);
  t.is(r.foldedBatchNorms, 8);
  t.is(r.absorbedActivations, 7);
  t.true(r.sizeBytes.int8 < 0.35 * r.sizeBytes.fp32, `int8 file is ${r.sizeBytes.int8} of ${r.sizeBytes.fp32} bytes`);

  const data = NpyFile.open(FMNIST.test);
  t.teardown(() => data.close());
  const files = new Map([['', data]]);
  const fp = await predictTop1(FMNIST.model, files, 300, { threads: 1 });
  const q = await predictTop1(r.outPath, files, 300, { threads: 1 });
  const labels = readNpy(FMNIST.labels).data as BigInt64Array;
  t.true(agreement(fp, q) >= 0.97, `top-1 agreement ${agreement(fp, q)}`);
  t.true(accuracy(q, labels) >= accuracy(fp, labels) - 0.02, `int8 ${accuracy(q, labels)} vs fp32 ${accuracy(fp, labels)}`);
});

test('the int8 model loads in ORT with graph optimizations off as well as on', async (t) => {
  const dir = tempDir(t);
  const r = await quantizeFixture(dir, { method: 'minmax' });
  const feeds = { input: new ort.Tensor('float32', NpyFile.open(FMNIST.test).read(0, 4) as Float32Array, [4, 1, 28, 28]) };
  const s = await openSession(r.outPath, { optimization: 'disabled', threads: 1 });
  const plain = (await s.run(feeds))[s.outputNames[0]].data as Float32Array;
  await s.release();
  const fused = await runOnce(r.outPath, feeds);
  // Both paths compute the same quantized arithmetic; they differ by at most a few output steps.
  t.true(maxAbsDiff(plain, fused) < 0.5, `unfused vs fused differ by ${maxAbsDiff(plain, fused)}`);
});

test('per-tensor and per-channel weights: per-channel DequantizeLinear has axis 0 on conv weights', async (t) => {
  const dir = tempDir(t);
  const pc = await quantizeFixture(dir, { method: 'minmax', out: join(dir, 'pc.onnx') });
  const pt = await quantizeFixture(dir, { method: 'minmax', out: join(dir, 'pt.onnx'), profile: { ...fbgemm, perChannel: false } });
  t.true(pc.perChannel);
  t.false(pt.perChannel);
  const axes = (p: string) => readModel(p).graph!.node.filter((n) => n.opType === 'DequantizeLinear' && n.attribute.some((a) => a.name === 'axis')).length;
  t.true(axes(pc.outPath) >= 9);
  t.is(axes(pt.outPath), 0);
  t.is(pt.int8Ops.QLinearConv, 8);
});

test('BatchNorm folding keeps the fixture model\'s outputs', async (t) => {
  const model = readModel(FMNIST.model);
  foldConstantNodes(model.graph!);
  foldInitializerIdentities(model.graph!);
  const folded = foldBatchNorm(model.graph!);
  t.is(folded.length, 8);
  t.false(model.graph!.node.some((n) => n.opType === 'BatchNormalization'));
  const x = NpyFile.open(FMNIST.test).read(0, 8) as Float32Array;
  const feeds = { input: new ort.Tensor('float32', x, [8, 1, 28, 28]) };
  const a = await runOnce(FMNIST.model, feeds);
  const b = await runOnce(encodeModel(model), feeds);
  t.true(maxAbsDiff(a, b) < 1e-3, `max diff ${maxAbsDiff(a, b)}`);
});

test('Gemm followed by BatchNormalization folds, with transB=0 and alpha/beta', async (t) => {
  const w = randomFloats(6 * 4, 1);
  const model = buildModel(
    [
      makeNode('Gemm', ['x', 'W', 'C'], ['g'], 'gemm', { transB: 0, alpha: { float: 0.5 }, beta: { float: 2 } }),
      makeNode('BatchNormalization', ['g', 'gamma', 'beta', 'mean', 'var'], ['y'], 'bn', { epsilon: { float: 1e-3 } }),
    ],
    [floatInput('x', ['N', 6])],
    [floatInput('y', ['N', 4])],
    [
      makeTensor('W', w, [6, 4]),
      makeTensor('C', randomFloats(4, 2), [4]),
      makeTensor('gamma', randomFloats(4, 3), [4]),
      makeTensor('beta', randomFloats(4, 4), [4]),
      makeTensor('mean', randomFloats(4, 5), [4]),
      makeTensor('var', randomFloats(4, 6).map((v) => 1 + Math.abs(v)), [4]),
    ],
  );
  const feeds = { x: new ort.Tensor('float32', randomFloats(12, 7), [2, 6]) };
  const before = await runOnce(encodeModel(model), feeds);
  t.is(foldBatchNorm(model.graph!).length, 1);
  const after = await runOnce(encodeModel(model), feeds);
  t.true(maxAbsDiff(before, after) < 1e-5);
});

test('a two-input model takes --calib NAME=FILE per input; a Relu after Add is absorbed', async (t) => {
  const dir = tempDir(t);
  const model = buildModel(
    [
      makeNode('Conv', ['a', 'Wa', 'Ba'], ['ca'], 'conv_a', { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }),
      makeNode('Conv', ['b', 'Wb', 'Bb'], ['cb'], 'conv_b', { kernel_shape: [1, 1] }),
      makeNode('Add', ['ca', 'cb'], ['s'], 'add'),
      makeNode('Relu', ['s'], ['y'], 'relu'),
    ],
    [floatInput('a', ['N', 3, 8, 8]), floatInput('b', ['N', 2, 8, 8])],
    [floatInput('y', ['N', 4, 8, 8])],
    [makeTensor('Wa', randomFloats(4 * 3 * 9, 11, 0.3), [4, 3, 3, 3]), makeTensor('Ba', randomFloats(4, 12), [4]), makeTensor('Wb', randomFloats(8, 13), [4, 2, 1, 1]), makeTensor('Bb', randomFloats(4, 14), [4])],
  );
  const path = join(dir, 'two.onnx');
  writeModel(model, path);
  writeNpy(join(dir, 'a.npy'), randomFloats(32 * 3 * 64, 21), [32, 3, 8, 8]);
  writeNpy(join(dir, 'b.npy'), randomFloats(32 * 2 * 64, 22), [32, 2, 8, 8]);
  const r = await quantize({ model: path, calib: new Map([['a', join(dir, 'a.npy')], ['b', join(dir, 'b.npy')]]), out: join(dir, 'q.onnx'), profile: fbgemm, method: 'minmax' });
  t.is(r.int8Ops.QLinearConv, 2);
  t.is(r.int8Ops.QLinearAdd, 1);
  t.is(r.absorbedActivations, 1);
  t.false(readModel(r.outPath).graph!.node.some((n) => n.opType === 'Relu'));
  const feeds = { a: new ort.Tensor('float32', randomFloats(3 * 64, 31), [1, 3, 8, 8]), b: new ort.Tensor('float32', randomFloats(2 * 64, 32), [1, 2, 8, 8]) };
  const fp = await runOnce(path, feeds);
  const q = await runOnce(r.outPath, feeds);
  t.true(Math.min(...q) >= 0, 'absorbed Relu still clamps at 0');
  const range = Math.max(...fp);
  t.true(maxAbsDiff(fp, q) < 0.05 * range, `max error ${maxAbsDiff(fp, q)} of range ${range}`);

  await t.throwsAsync(quantize({ model: path, calib: new Map([['', join(dir, 'a.npy')]]), out: join(dir, 'q2.onnx'), profile: fbgemm }), { instanceOf: EdgeqError, message: /2 inputs/ });
  await t.throwsAsync(quantize({ model: path, calib: new Map([['a', join(dir, 'a.npy')]]), out: join(dir, 'q2.onnx'), profile: fbgemm }), { message: /no calibration data for model input "b"/ });
});

test('--exclude keeps a node in float', async (t) => {
  const dir = tempDir(t);
  const model = readModel(FMNIST.model);
  const conv = model.graph!.node.find((n) => n.opType === 'Conv')!.name;
  const r = await quantizeFixture(dir, { method: 'minmax', exclude: [conv] });
  t.is(r.floatOps.Conv, 1);
  t.is(r.int8Ops.QLinearConv, 7);
  t.true(r.skipped.some((s) => s.node === conv && s.reason === 'excluded'));
});

// Bad input: one clear error with a stable code, and nothing written.
async function expectRejected(t: import('ava').ExecutionContext, dir: string, opts: Partial<Parameters<typeof quantize>[0]>, code: ErrorCode, mention: RegExp): Promise<void> {
  const out = opts.out ?? join(dir, 'out.onnx');
  const err = await t.throwsAsync(quantize({ model: FMNIST.model, calib: new Map([['', FMNIST.calib]]), profile: fbgemm, calibCount: 20, ...opts, out }));
  t.true(err instanceof EdgeqError, String(err));
  t.is((err as EdgeqError).code, code);
  t.regex(err!.message, mention);
  t.false(existsSync(out) && out.endsWith('out.onnx'), 'no output file');
  t.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp')), [], 'no temporary files left');
}

test('bad input: missing, truncated and non-ONNX model files', async (t) => {
  const dir = tempDir(t);
  await expectRejected(t, dir, { model: join(dir, 'nope.onnx') }, 'E_FILE_NOT_FOUND', /nope\.onnx/);
  const trunc = join(dir, 'trunc.onnx');
  writeFileSync(trunc, readModelBytes().subarray(0, 5000));
  await expectRejected(t, dir, { model: trunc }, 'E_MODEL_INVALID', /trunc\.onnx/);
  const text = join(dir, 'text.onnx');
  writeFileSync(text, 'this is not a model\n');
  await expectRejected(t, dir, { model: text }, 'E_MODEL_INVALID', /text\.onnx/);
});

function readModelBytes(): Buffer {
  return Buffer.from(encodeModel(readModel(FMNIST.model)));
}

test('bad input: .npy whose shape or dtype does not fit, or is not .npy at all', async (t) => {
  const dir = tempDir(t);
  const wrongShape = join(dir, 'shape.npy');
  writeNpy(wrongShape, new Float32Array(4 * 32 * 32), [4, 1, 32, 32]);
  await expectRejected(t, dir, { calib: new Map([['', wrongShape]]) }, 'E_SHAPE_MISMATCH', /shape\.npy.*\[4, 1, 32, 32\]/);
  const wrongRank = join(dir, 'rank.npy');
  writeNpy(wrongRank, new Float32Array(4 * 784), [4, 784]);
  await expectRejected(t, dir, { calib: new Map([['', wrongRank]]) }, 'E_SHAPE_MISMATCH', /rank\.npy/);
  const wrongType = join(dir, 'type.npy');
  writeNpy(wrongType, new Float64Array(2 * 784), [2, 1, 28, 28]);
  await expectRejected(t, dir, { calib: new Map([['', wrongType]]) }, 'E_DTYPE_MISMATCH', /float64.*float32/);
  const notNpy = join(dir, 'junk.npy');
  writeFileSync(notNpy, 'junk');
  await expectRejected(t, dir, { calib: new Map([['', notNpy]]) }, 'E_NPY_INVALID', /junk\.npy/);
  await expectRejected(t, dir, { calib: new Map([['', join(dir, 'missing.npy')]]) }, 'E_FILE_NOT_FOUND', /missing\.npy/);
});

test('bad input: --exclude naming no node, unwritable --out', async (t) => {
  const dir = tempDir(t);
  await expectRejected(t, dir, { exclude: ['no_such_node'] }, 'E_EXCLUDE_UNKNOWN', /no_such_node/);
  await expectRejected(t, dir, { out: join(dir, 'no/such/dir/out.onnx') }, 'E_OUTPUT_UNWRITABLE', /no\/such\/dir/);
  await expectRejected(t, dir, { out: dir }, 'E_OUTPUT_UNWRITABLE', /directory/);
  if (process.getuid?.() !== 0) {
    const ro = join(dir, 'ro');
    copyFileSync(FMNIST.model, join(dir, 'm.onnx'));
    chmodSync(dir, 0o555);
    t.teardown(() => chmodSync(dir, 0o755));
    await expectRejected(t, dir, { out: join(ro, 'x.onnx') }, 'E_OUTPUT_UNWRITABLE', /x\.onnx/);
  }
});

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('CLI: quantize --json prints the result object', (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'q.onnx');
  const r = cli(['quantize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--out', out, '--calib-count', '50', '--method', 'minmax', '--profile', 'auto', '--json']);
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  for (const k of ['outPath', 'profile', 'method', 'calibCount', 'sizeBytes', 'nodes', 'int8Ops', 'floatOps', 'timingsMs']) t.true(k in j, k);
  t.is(j.calibCount, 50);
  t.is(j.profile, chooseProfile(localCpu()).profile.name);
  t.true(j.sizeBytes.int8 < j.sizeBytes.fp32);
  t.true(j.timingsMs.total >= j.timingsMs.calibrate);
});

test('CLI: errors are one line on stderr, or a JSON object with --json, and exit 1', (t) => {
  const dir = tempDir(t);
  const r = cli(['quantize', '--model', join(dir, 'missing.onnx'), '--calib', FMNIST.calib, '--out', join(dir, 'q.onnx')]);
  t.is(r.status, 1);
  t.is(r.stdout, '');
  t.regex(r.stderr, /^edgeq: error: file not found: .*missing\.onnx\n$/);
  const j = cli(['quantize', '--model', join(dir, 'missing.onnx'), '--calib', FMNIST.calib, '--out', join(dir, 'q.onnx'), '--json']);
  t.is(j.status, 1);
  t.deepEqual(JSON.parse(j.stdout).error.code, 'E_FILE_NOT_FOUND');
  const usage = cli(['quantize', '--model', FMNIST.model]);
  t.is(usage.status, 2);
  t.regex(usage.stderr, /Missing required argument/);
});
