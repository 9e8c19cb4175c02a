import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, fromBinary } from '@bufbuild/protobuf';
import { ModelProtoSchema, StringStringEntryProtoSchema, TensorProtoSchema, TensorProto_DataLocation } from 'onnx-buf';
import { warmUp } from '../../agent/deploy.js';
import { makeNode } from '../../quant/onnx/graph.js';
import { decodeModel, encodeModel, readModel } from '../../quant/onnx/model.js';
import { DT, tensorValues } from '../../quant/onnx/tensor.js';
import { foldBatchNorm } from '../../quant/passes/fold-bn.js';
import { onnxBytes, type OnnxRecipe, type SyntheticSpec, type TensorSpec } from '../../tools/fuzzing/onnx-cases.js';
import { onnxTarget } from '../../tools/fuzzing/targets.js';
import { CLI, FMNIST, tempDir } from '../helpers/fixtures.js';
import { checkCases, fuzzTest } from '../helpers/fuzz.js';

fuzzTest(test, onnxTarget);

const FLOAT2: TensorSpec = { dt: DT.FLOAT, dims: [2n], storage: 'raw' };

/** Conv (2 output channels) → BatchNormalization whose gamma is `gamma`: foldBatchNorm reads gamma first. */
function convBn(gamma: TensorSpec): SyntheticSpec {
  return { op: 'Conv', w: { dt: DT.FLOAT, dims: [2n, 1n, 1n, 1n], storage: 'raw' }, bias: 'none', bn: [gamma, FLOAT2, FLOAT2, FLOAT2], bnOutputs: 1, shared: false, opset: 13n };
}

/** Found by the fuzzer; each input made quantize's preparation throw something other than an EdgeqError. */
const FOUND: OnnxRecipe[] = [
  // An external-data location naming a directory: readSync failed with a bare EISDIR.
  { kind: 'synthetic', spec: { op: 'Conv', w: { dt: DT.FLOAT, dims: [1n, 1n], storage: 'raw' }, bias: 'none', bn: [null, null, null, null], bnOutputs: 1, shared: false, opset: 0n }, edits: [{ op: 'external', t: 0, location: 'sub/' }], mutations: [] },
  // A BatchNormalization parameter with dims [-1] and no data: new Float32Array(-1), a RangeError.
  { kind: 'synthetic', spec: convBn({ dt: DT.FLOAT, dims: [-1n], storage: 'none' }), edits: [], mutations: [] },
  // dims of 5e9 elements and no data: a RangeError (invalid typed array length).
  { kind: 'synthetic', spec: convBn({ dt: DT.FLOAT, dims: [5000000000n], storage: 'none' }), edits: [], mutations: [] },
  // dims of 1e8 elements and no data: 400 MB allocated before the data was found missing.
  { kind: 'synthetic', spec: convBn({ dt: DT.FLOAT, dims: [100000000n], storage: 'none' }), edits: [], mutations: [] },
];

test('fuzz onnx regressions: the inputs the fuzzer found are refused with an EdgeqError', async (t) => {
  await checkCases(t, onnxTarget, FOUND.map((recipe) => ({ recipe, bytes: onnxBytes(recipe) })));
});

test('readModel: an external-data location that is a directory is E_MODEL_INVALID, not EISDIR', (t) => {
  const dir = tempDir(t, 'edgeq-fuzz-regress-');
  mkdirSync(join(dir, 'sub'));
  const m = fromBinary(ModelProtoSchema, encodeModel(readModel(FMNIST.model)));
  const w = m.graph!.initializer[0];
  w.dataLocation = TensorProto_DataLocation.EXTERNAL;
  w.externalData = [create(StringStringEntryProtoSchema, { key: 'location', value: 'sub' })];
  w.rawData = new Uint8Array(0);
  writeFileSync(join(dir, 'model.onnx'), encodeModel(m));
  t.throws(() => readModel(join(dir, 'model.onnx')), { code: 'E_MODEL_INVALID', message: /sub is not a file/ } as never);
});

test('readModel: an external-data location that is a FIFO is refused at once, not waited on', (t) => {
  const dir = tempDir(t, 'edgeq-fuzz-regress-');
  if (spawnSync('mkfifo', [join(dir, 'pipe')]).status !== 0) {
    t.pass('no mkfifo here');
    return;
  }
  const m = readModel(FMNIST.model);
  const w = m.graph!.initializer[0];
  w.dataLocation = TensorProto_DataLocation.EXTERNAL;
  w.externalData = [create(StringStringEntryProtoSchema, { key: 'location', value: 'pipe' })];
  w.rawData = new Uint8Array(0);
  writeFileSync(join(dir, 'model.onnx'), encodeModel(m));
  // In a child with a timeout: opening a FIFO used to block until a writer came, forever.
  const model = new URL('../../quant/onnx/model.js', import.meta.url).href;
  const code = `import { readModel } from ${JSON.stringify(model)}; try { readModel(${JSON.stringify(join(dir, 'model.onnx'))}); console.log('read'); } catch (e) { console.log(e.code); }`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { timeout: 60_000, encoding: 'utf8' });
  t.is(r.signal, null, 'readModel blocked on the FIFO');
  t.is(r.stdout.trim(), 'E_MODEL_INVALID', r.stderr);
});

test('decodeModel / readModel: a tensor whose dims promise more than it stores is E_MODEL_INVALID (ONNX Runtime allocated gigabytes for one)', (t) => {
  const dir = tempDir(t, 'edgeq-fuzz-regress-');
  // Found by the onnx-runtime target: the expanded LayerNormalization test model with one
  // Constant's int64 value (one element) given dims [2147483648]; InferenceSession.create then
  // grew to 7 GB and failed with std::bad_alloc after 10 s (under an 8 GB address-space limit).
  const bomb = (edit: (m: ReturnType<typeof readModel>) => void) => {
    const m = readModel(FMNIST.model);
    edit(m);
    return encodeModel(m);
  };
  const constant = bomb((m) => {
    m.graph!.node.unshift(makeNode('Constant', [], ['big'], 'big', { value: create(TensorProtoSchema, { dataType: DT.INT64, dims: [2147483648n], int64Data: [1n] }) }));
  });
  t.throws(() => decodeModel(constant), { code: 'E_MODEL_INVALID', message: /dims \[2147483648\], but it holds data for at most 1 elements/ } as never);
  // An external tensor is measured against its file (here: 64 bytes for dims of 2^40 floats).
  writeFileSync(join(dir, 'w.bin'), new Uint8Array(64));
  const external = bomb((m) => {
    const w = m.graph!.initializer[0];
    w.dims = [2n ** 40n];
    w.rawData = new Uint8Array(0);
    w.dataLocation = TensorProto_DataLocation.EXTERNAL;
    w.externalData = [create(StringStringEntryProtoSchema, { key: 'location', value: 'w.bin' }), create(StringStringEntryProtoSchema, { key: 'length', value: String(2 ** 42) })];
  });
  writeFileSync(join(dir, 'model.onnx'), external);
  t.notThrows(() => decodeModel(external), 'without the directory, external data is not measured');
  t.throws(() => readModel(join(dir, 'model.onnx'), { externalData: 'keep' }), { code: 'E_MODEL_INVALID', message: /external data \(w\.bin\) has 64 bytes/ } as never);
  // The fixture itself, every tensor as its dims say, still reads.
  t.notThrows(() => readModel(FMNIST.model));
});

/** The fixture with a 6-byte Constant whose dims claim 2^31 int64s: ONNX Runtime allocates them all (finding 5). */
function writeBomb(path: string): void {
  const m = readModel(FMNIST.model);
  m.graph!.node.unshift(makeNode('Constant', [], ['big'], 'big', { value: create(TensorProtoSchema, { dataType: DT.INT64, dims: [2147483648n], int64Data: [1n] }) }));
  writeFileSync(path, encodeModel(m));
}

test('the deploy warm-up reads a model with edgeq\'s reader before ONNX Runtime sees it, so the bomb is refused, not allocated', async (t) => {
  const dir = tempDir(t, 'edgeq-fuzz-warmup-');
  writeBomb(join(dir, 'bomb.onnx'));
  const before = process.memoryUsage().rss;
  const e = await t.throwsAsync(warmUp(join(dir, 'bomb.onnx')));
  t.is((e as { code?: string }).code, 'E_WARMUP_FAILED');
  t.regex(e!.message, /dims \[2147483648\]/);
  t.true(process.memoryUsage().rss - before < 256 * 1024 * 1024);
});

test('edgeq eval reads the files it is given with edgeq\'s reader before ONNX Runtime sees them: the bomb is E_MODEL_INVALID, not allocated', (t) => {
  const dir = tempDir(t, 'edgeq-fuzz-eval-');
  writeBomb(join(dir, 'bomb.onnx'));
  // The child reports its peak RSS (KiB) as it exits.
  const peak = 'data:text/javascript,process.on("exit",()=>process.stderr.write("maxRSS="+process.resourceUsage().maxRSS+"\\n"))';
  for (const models of [['--model', join(dir, 'bomb.onnx')], ['--model', FMNIST.model, '--compare', join(dir, 'bomb.onnx')]]) {
    const r = spawnSync(process.execPath, ['--import', peak, CLI, 'eval', ...models, '--data', FMNIST.test, '--count', '8', '--json'], { encoding: 'utf8' });
    t.is(r.status, 1, r.stderr);
    const e = (JSON.parse(r.stdout) as { error: { code: string; message: string } }).error;
    t.is(e.code, 'E_MODEL_INVALID');
    t.regex(e.message, /dims \[2147483648\]/);
    t.true(Number(/maxRSS=(\d+)/.exec(r.stderr)?.[1]) < 256 * 1024, r.stderr);
  }
});

test('tensorValues: negative or huge dims without data are E_MODEL_INVALID, and nothing is allocated for them', (t) => {
  for (const dims of [[-1n], [-2n, -3n], [5000000000n], [100000000n], [2n ** 62n, 4n]]) {
    const before = process.memoryUsage().arrayBuffers;
    t.throws(() => tensorValues(create(TensorProtoSchema, { name: 'w', dataType: DT.FLOAT, dims })), { code: 'E_MODEL_INVALID' } as never, `dims [${dims.join(', ')}]`);
    t.true(process.memoryUsage().arrayBuffers - before < 2 ** 20, `dims [${dims.join(', ')}] allocated memory`);
  }
  // [-2, -3] has a positive product: raw data of 6 floats must not pass as a valid tensor either.
  t.throws(() => tensorValues(create(TensorProtoSchema, { name: 'w', dataType: DT.FLOAT, dims: [-2n, -3n], rawData: new Uint8Array(24) })), { code: 'E_MODEL_INVALID' } as never);
});

test('foldBatchNorm on the fixture with a BN parameter of dims [-1] is E_MODEL_INVALID', (t) => {
  const m = readModel(FMNIST.model);
  const bn = m.graph!.node.find((n) => n.opType === 'BatchNormalization')!;
  const gamma = m.graph!.initializer.find((i) => i.name === bn.input[1])!;
  gamma.dims = [-1n];
  gamma.rawData = new Uint8Array(0);
  t.throws(() => foldBatchNorm(m.graph!), { code: 'E_MODEL_INVALID' } as never);
});
