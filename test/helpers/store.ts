/** Stores in temporary directories and small samples, for the store and capture tests. */
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { Store, type OfferedSample, type SampleTensor, type TensorSpec } from '../../agent/store/index.js';
import { tempDir } from './fixtures.js';

export const SHA_A = 'a'.repeat(64);

/** A new store in a fresh temporary directory, closed when the test ends. */
export function tempStore(t: ExecutionContext): Store {
  const store = Store.open(join(tempDir(t, 'edgeq-store-'), 'state', 'edgeq.db'));
  t.teardown(() => store.close());
  return store;
}

/** Registers model `name` (version 1, active) with `inputs` (default: one float32 input x of [N, 1]). */
export function addModel(store: Store, name = 'm', inputs: TensorSpec[] = [{ name: 'x', dtype: 'float32', shape: ['N', 1] }]): void {
  store.addModelVersion(name, { kind: 'fp32', path: `/models/${name}.onnx`, sha256: SHA_A, sizeBytes: 1000, inputs });
  store.setActive(name, 1);
}

/** A float32 tensor of one sample holding `values` (shape [1, values.length] unless given). */
export function f32(values: ArrayLike<number>, name = 'x', shape: number[] = [1, values.length]): SampleTensor {
  const a = Float32Array.from(values);
  return { name, dtype: 'float32', shape, data: new Uint8Array(a.buffer) };
}

/** A one-input sample whose single float32 value is `v` (distinct v give distinct content). */
export function one(v: number, source = 'test', extra: Partial<OfferedSample> = {}): OfferedSample {
  return { tensors: [f32([v])], source, ...extra };
}

/** The float32 values of a stored tensor. */
export function floats(t: SampleTensor): number[] {
  return Array.from(new Float32Array(t.data.slice().buffer));
}

/** A rand() that returns the given values in order, then throws. */
export function scripted(values: number[]): () => number {
  let i = 0;
  return () => {
    if (i >= values.length) throw new Error('scripted rand ran out of values');
    return values[i++];
  };
}
