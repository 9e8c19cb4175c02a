import test from 'ava';
import { join } from 'node:path';
import { quantize } from '../../quant/index.js';
import { readModel, writeModel, encodeModel } from '../../quant/onnx/model.js';
import { writeNpy } from '../../quant/npy.js';
import { openSession, ort } from '../../quant/runtime.js';
import { foldBatchNorm } from '../../quant/passes/fold-bn.js';
import { chooseProfile, localCpu } from '../../agent/detect.js';
import { tempDir } from '../helpers/fixtures.js';
import { buildModel, floatInput, makeNode, makeTensor, randomFloats } from '../helpers/models.js';

const profile = chooseProfile(localCpu()).profile;

async function run(model: string | Uint8Array, feeds: Record<string, ort.Tensor>, optimization: 'disabled' | 'all' = 'all'): Promise<Float32Array> {
  const s = await openSession(model, { threads: 1, optimization });
  try {
    return (await s.run(feeds))[s.outputNames[0]].data as Float32Array;
  } finally {
    await s.release();
  }
}

function relError(ref: Float32Array, got: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (ref[i] - got[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/**
 * One graph with most op families the quantizer knows: conv trunk, a MatMul head, element-wise
 * and lookup-table ops, pooling, and the shape ops that ORT runs on uint8.
 */
function zoo() {
  const n = [
    makeNode('Conv', ['x', 'W1', 'B1'], ['c1'], 'conv1', { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }),
    makeNode('Clip', ['c1', 'zero', 'six'], ['r1'], 'relu6'),
    makeNode('LeakyRelu', ['r1'], ['l1'], 'leaky', { alpha: { float: 0.1 } }),
    makeNode('Conv', ['l1', 'W2', 'B2'], ['c2'], 'conv2', { kernel_shape: [1, 1] }),
    makeNode('Sigmoid', ['c2'], ['s2'], 'sigmoid'),
    makeNode('Mul', ['c2', 's2'], ['m2'], 'swish'),
    makeNode('HardSigmoid', ['m2'], ['h2'], 'hardsigmoid'),
    makeNode('Concat', ['m2', 'h2'], ['cat'], 'concat', { axis: 1 }),
    makeNode('AveragePool', ['cat'], ['ap'], 'avgpool', { kernel_shape: [2, 2], strides: [2, 2] }),
    makeNode('MaxPool', ['ap'], ['mp'], 'maxpool', { kernel_shape: [2, 2], strides: [2, 2] }),
    makeNode('Resize', ['mp', '', 'scales'], ['up'], 'resize', { mode: 'nearest' }),
    makeNode('Transpose', ['up'], ['tr'], 'transpose', { perm: [0, 2, 3, 1] }),
    makeNode('Reshape', ['tr', 'shape'], ['flat'], 'reshape'),
    makeNode('MatMul', ['flat', 'Wm'], ['mm'], 'matmul'),
    makeNode('Add', ['mm', 'Bm'], ['logits0'], 'bias_add'),
    makeNode('Unsqueeze', ['logits0', 'axes'], ['u'], 'unsqueeze'),
    makeNode('Squeeze', ['u', 'axes'], ['sq'], 'squeeze'),
    makeNode('Softmax', ['sq'], ['y'], 'softmax', { axis: 1 }),
  ];
  const inits = [
    makeTensor('W1', randomFloats(8 * 3 * 9, 1, 0.3), [8, 3, 3, 3]),
    makeTensor('B1', randomFloats(8, 2, 0.1), [8]),
    makeTensor('zero', new Float32Array([0]), []),
    makeTensor('six', new Float32Array([6]), []),
    makeTensor('W2', randomFloats(8 * 8, 3, 0.5), [8, 8, 1, 1]),
    makeTensor('B2', randomFloats(8, 4, 0.1), [8]),
    makeTensor('scales', new Float32Array([1, 1, 2, 2]), [4]),
    makeTensor('shape', new BigInt64Array([-1n, 4n * 4n * 16n]), [2]),
    makeTensor('Wm', randomFloats(256 * 10, 5, 0.1), [256, 10]),
    makeTensor('Bm', randomFloats(10, 6, 0.1), [10]),
    makeTensor('axes', new BigInt64Array([1n]), [1]),
  ];
  return buildModel(n, [floatInput('x', ['N', 3, 8, 8])], [floatInput('y', ['N', 10])], inits, 13);
}

test('every op family: quantized where ORT has an int8 kernel, same results with optimizations off and on', async (t) => {
  const dir = tempDir(t);
  const model = join(dir, 'zoo.onnx');
  writeModel(zoo(), model);
  writeNpy(join(dir, 'x.npy'), randomFloats(64 * 3 * 64, 9, 2), [64, 3, 8, 8]);
  const r = await quantize({ model, calib: new Map([['', join(dir, 'x.npy')]]), out: join(dir, 'q.onnx'), profile, method: 'minmax' });
  t.is(r.absorbedActivations, 1, 'Clip(0, 6) absorbed into conv1');
  for (const op of ['QLinearConv', 'QLinearLeakyRelu', 'QLinearSigmoid', 'QLinearMul', 'QLinearConcat', 'QLinearAveragePool', 'QLinearMatMul', 'QLinearAdd', 'QLinearSoftmax']) {
    t.true((r.int8Ops[op] ?? 0) >= 1, `${op} missing from ${JSON.stringify(r.int8Ops)}`);
  }
  // Shape ops run on uint8 once their Q/DQ share parameters (MaxPool as ORT's NHWC variant).
  for (const op of ['Resize', 'Reshape', 'Unsqueeze', 'Squeeze']) t.is(r.int8Ops[op], 1, `${op} not in int8`);
  t.is((r.int8Ops.MaxPool ?? 0) + (r.int8Ops.NhwcMaxPool ?? 0), 1);
  for (const op of ['Conv', 'MatMul', 'Gemm', 'Mul', 'Sigmoid', 'LeakyRelu', 'Softmax', 'Concat', 'AveragePool']) t.false(op in r.floatOps, `${op} runs in float`);
  t.is(r.floatOps.HardSigmoid, 1, 'HardSigmoid has no int8 kernel and stays float');
  const q = readModel(r.outPath);
  t.false(q.graph!.node.some((n) => n.opType === 'Clip'));

  const feeds = { x: new ort.Tensor('float32', randomFloats(4 * 3 * 64, 10, 2), [4, 3, 8, 8]) };
  const ref = await run(model, feeds);
  const fused = await run(r.outPath, feeds);
  const plain = await run(r.outPath, feeds, 'disabled');
  t.true(relError(ref, fused) < 0.1, `int8 vs fp32 relative error ${relError(ref, fused)}`);
  t.true(relError(plain, fused) < 0.05, `unfused vs fused relative error ${relError(plain, fused)}`);
});

test('an opset 11 model gets per-tensor weights and a warning instead of per-channel', async (t) => {
  const dir = tempDir(t);
  const m = buildModel(
    [makeNode('Conv', ['x', 'W', 'B'], ['y'], 'conv', { kernel_shape: [3, 3] })],
    [floatInput('x', ['N', 2, 6, 6])],
    [floatInput('y', ['N', 4, 4, 4])],
    [makeTensor('W', randomFloats(4 * 2 * 9, 1), [4, 2, 3, 3]), makeTensor('B', randomFloats(4, 2), [4])],
    11,
  );
  writeModel(m, join(dir, 'm.onnx'));
  writeNpy(join(dir, 'x.npy'), randomFloats(8 * 72, 3), [8, 2, 6, 6]);
  const r = await quantize({ model: join(dir, 'm.onnx'), calib: new Map([['', join(dir, 'x.npy')]]), out: join(dir, 'q.onnx'), profile: { ...profile, perChannel: true }, method: 'minmax' });
  t.false(r.perChannel);
  t.regex(r.warnings.join('\n'), /per tensor/);
  t.is(r.int8Ops.QLinearConv, 1);
});

test('ConvTranspose with groups: BatchNormalization folds per output channel', async (t) => {
  const group = 2, cin = 4, coutPerGroup = 3;
  const cout = coutPerGroup * group;
  const m = buildModel(
    [
      makeNode('ConvTranspose', ['x', 'W'], ['c'], 'deconv', { kernel_shape: [2, 2], strides: [2, 2], group }),
      makeNode('BatchNormalization', ['c', 'g', 'b', 'mean', 'var'], ['y'], 'bn'),
    ],
    [floatInput('x', ['N', cin, 3, 3])],
    [floatInput('y', ['N', cout, 6, 6])],
    [
      makeTensor('W', randomFloats(cin * coutPerGroup * 4, 1), [cin, coutPerGroup, 2, 2]),
      makeTensor('g', randomFloats(cout, 2).map((v) => 1 + v / 2), [cout]),
      makeTensor('b', randomFloats(cout, 3), [cout]),
      makeTensor('mean', randomFloats(cout, 4), [cout]),
      makeTensor('var', randomFloats(cout, 5).map((v) => 1 + Math.abs(v)), [cout]),
    ],
  );
  const feeds = { x: new ort.Tensor('float32', randomFloats(2 * cin * 9, 6), [2, cin, 3, 3]) };
  const before = await run(encodeModel(m), feeds);
  t.is(foldBatchNorm(m.graph!).length, 1);
  t.false(m.graph!.node.some((n) => n.opType === 'BatchNormalization'));
  const after = await run(encodeModel(m), feeds);
  t.true(relError(before, after) < 1e-5, `relative error ${relError(before, after)}`);
});
