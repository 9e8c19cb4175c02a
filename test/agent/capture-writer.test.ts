import test from 'ava';
import * as ort from 'onnxruntime-node';
import { CaptureWriter, fromTypedArray, splitBatch, splitSamples, toSampleTensor } from '../../agent/capture/index.js';
import type { SampleTensor, Store } from '../../agent/store/index.js';
import { EdgeqError } from '../../quant/errors.js';
import { addModel, floats, tempStore } from '../helpers/store.js';

const INPUTS = [
  { name: 'x', dtype: 'float32', shape: ['N', 2] },
  { name: 'k', dtype: 'int64', shape: ['N'] },
];

function request(first: number, n: number): SampleTensor[] {
  const x = Float32Array.from({ length: 2 * n }, (_, i) => first + Math.floor(i / 2) + (i % 2) / 2);
  const k = BigInt64Array.from({ length: n }, (_, i) => BigInt(first + i));
  return [fromTypedArray('x', x, [n, 2]), fromTypedArray('k', k, [n])];
}

function captureStore(t: import('ava').ExecutionContext, models = ['m']): Store {
  const store = tempStore(t);
  for (const m of models) {
    addModel(store, m, INPUTS);
    store.setPolicy(m, { rate: 1 });
  }
  return store;
}

function codes(errors: unknown[]): string[] {
  return errors.map((e) => (e instanceof EdgeqError ? e.code : String(e)));
}

test('tensor helpers: an ort.Tensor becomes raw bytes; batches split along axis 0 into copies', (t) => {
  const data = Float32Array.from([1, 2, 3, 4, 5, 6]);
  const s = toSampleTensor('x', new ort.Tensor('float32', data, [3, 2]));
  t.deepEqual([s.name, s.dtype, s.shape], ['x', 'float32', [3, 2]]);
  t.is(s.data.byteLength, 24);
  const parts = splitBatch(s);
  t.deepEqual(parts.map((p) => p.shape), [[1, 2], [1, 2], [1, 2]]);
  t.deepEqual(parts.map(floats), [[1, 2], [3, 4], [5, 6]]);
  data[0] = 99; // the parts are copies
  t.deepEqual(floats(parts[0]), [1, 2]);
  t.is(toSampleTensor('b', new ort.Tensor('bool', Uint8Array.from([1, 0]), [2])).dtype, 'bool');
  t.is(toSampleTensor('i', new ort.Tensor('int64', BigInt64Array.from([1n, 2n]), [1, 2])).data.byteLength, 16);
  t.is(fromTypedArray('h', new Uint16Array(4), [1, 4], 'float16').dtype, 'float16');
  t.throws(() => toSampleTensor('s', new ort.Tensor('string', ['a', 'b'], [2])), { code: 'E_DTYPE_MISMATCH' } as never);
  t.throws(() => fromTypedArray('x', new Float32Array(5), [2, 2]), { message: /20 bytes of data, shape \[2, 2\] of float32 needs 16/ });
  const samples = splitSamples(request(10, 3), 2);
  t.is(samples.length, 2);
  t.deepEqual(samples[1].map((x) => [x.name, x.shape]), [['x', [1, 2]], ['k', [1]]]);
  t.throws(() => splitSamples([fromTypedArray('x', new Float32Array(4), [2, 2]), fromTypedArray('k', new BigInt64Array(3), [3])]), { message: /share a leading batch dim/ });
});

test('offers are queued and written in one transaction per model on flush, batches split into samples', async (t) => {
  const store = captureStore(t, ['m', 'n']);
  const errors: unknown[] = [];
  const w = new CaptureWriter(store, { flushMs: 60_000, onError: (e) => errors.push(e) });
  w.offer('m', request(0, 3), 'http');
  w.offer('n', request(100, 2), 'http');
  w.offer('m', request(10, 1), 'import');
  t.deepEqual(w.stats(), { queued: 6, dropped: 0, written: 0, refused: 0, failed: 0 });
  t.is(store.countSamples('m'), 0, 'nothing is written before the flush');
  await w.flush();
  t.deepEqual(w.stats(), { queued: 0, dropped: 0, written: 6, refused: 0, failed: 0 });
  const m = [...store.iterateSamples('m')];
  t.deepEqual(m.map((s) => floats(s.tensors[0])), [[0, 0.5], [1, 1.5], [2, 2.5], [10, 10.5]]);
  t.deepEqual(m.map((s) => s.source), ['http', 'http', 'http', 'import']);
  t.deepEqual(m.map((s) => new BigInt64Array(s.tensors[1].data.slice().buffer)[0]), [0n, 1n, 2n, 10n]);
  t.is(store.countSamples('n'), 2);
  t.deepEqual(errors, []);
  await w.close();
});

test('a bad request is refused and reported without taking the rest of its flush down', async (t) => {
  const store = captureStore(t);
  const errors: unknown[] = [];
  const w = new CaptureWriter(store, { flushMs: 60_000, onError: (e) => errors.push(e) });
  w.offer('m', request(0, 2), 'a');
  w.offer('m', [fromTypedArray('x', new Float32Array(6), [2, 3]), fromTypedArray('k', new BigInt64Array(2), [2])], 'bad-shape');
  w.offer('m', [fromTypedArray('x', new Float32Array(2), [1, 2])], 'missing-k');
  w.offer('m', [fromTypedArray('x', new Float32Array(4), [2, 2]), fromTypedArray('k', new BigInt64Array(3), [3])], 'ragged');
  w.offer('m', undefined as unknown as SampleTensor[], 'garbage');
  w.offer('nope', request(0, 1), 'unknown-model');
  w.offer('m', request(7, 1), '');
  w.offer('m', request(5, 1), 'b');
  await w.flush();
  t.deepEqual(codes(errors).sort(), ['E_CAPTURE_INVALID', 'E_CAPTURE_INVALID', 'E_CAPTURE_INVALID', 'E_MODEL_UNKNOWN', 'E_SHAPE_MISMATCH', 'E_SHAPE_MISMATCH']);
  t.deepEqual([...store.iterateSamples('m')].map((s) => s.source), ['a', 'a', 'b']);
  t.like(w.stats(), { written: 3, refused: 2 + 1 + 1 + 1 + 1 + 1, failed: 0 });
  // The store counts what was refused for a model it knows.
  t.like(store.captureStats('m'), { kept: 3, refused: 2 + 1 + 1 + 1 + 1 });
  await w.close();
});

test('the queue is bounded: the newest samples are dropped and counted; a closed writer drops offers', async (t) => {
  const store = captureStore(t);
  const w = new CaptureWriter(store, { flushMs: 60_000, maxQueue: 5, onError: () => t.fail() });
  w.offer('m', request(0, 4), 's');
  w.offer('m', request(10, 3), 's');
  t.like(w.stats(), { queued: 5, dropped: 2 });
  await w.flush();
  t.deepEqual([...store.iterateSamples('m')].map((s) => floats(s.tensors[0])[0]), [0, 1, 2, 3, 10]);
  const bytesBound = new CaptureWriter(store, { flushMs: 60_000, maxQueueBytes: 3 * 16, onError: () => t.fail() });
  bytesBound.offer('m', request(20, 5), 's'); // 16 bytes a sample
  t.like(bytesBound.stats(), { queued: 3, dropped: 2 });
  await bytesBound.close();
  await w.close();
  w.offer('m', request(30, 2), 's');
  t.like(w.stats(), { queued: 0, dropped: 4, written: 5 });
  t.is(store.countSamples('m'), 8);
});

test('without an explicit flush, the writer flushes on its own', async (t) => {
  const store = captureStore(t);
  const w = new CaptureWriter(store, { flushMs: 1, onError: () => t.fail() });
  t.teardown(() => w.close());
  w.offer('m', request(0, 2), 's');
  // Wait (without asserting how long) until the timer has written the samples.
  while (w.stats().written < 2) await new Promise((r) => setTimeout(r, 5));
  t.is(store.countSamples('m'), 2);
});

test('offerFeeds captures the feeds of an inference call; the store\'s policy decides what stays', async (t) => {
  const store = captureStore(t);
  store.setPolicy('m', { maxSamples: 2 });
  const w = new CaptureWriter(store, { flushMs: 60_000, rand: () => 0.5, onError: () => t.fail() });
  w.offerFeeds('m', { x: new ort.Tensor('float32', Float32Array.from([1, 2, 3, 4, 5, 6]), [3, 2]), k: new ort.Tensor('int64', BigInt64Array.from([1n, 2n, 3n]), [3]) }, 'serve');
  await w.close();
  t.like(w.stats(), { written: 3 });
  t.like(store.captureStats('m'), { seen: 3, kept: 2, reservoirFull: 1 });
});
