import test from 'ava';
import { decodeJsonBody, decodeNpyBody, type InputSpec } from '../../agent/serve/tensors.js';
import { encodeNpy } from '../../quant/npy.js';
import { bodyTarget } from '../../tools/fuzzing/targets.js';
import { fuzzTest } from '../helpers/fuzz.js';

fuzzTest(test, bodyTarget);

const PAIR: InputSpec[] = [{ name: 'a', type: 'float32', shape: ['N', 3] }, { name: 'b', type: 'float32', shape: ['N', 3] }];

test('decodeJsonBody: inputs that give one dim name two sizes are E_SHAPE_MISMATCH (found by the fuzzer: ONNX Runtime failed on them, a 500)', (t) => {
  const body = Buffer.from(JSON.stringify({ inputs: { a: { shape: [2, 3], data: [1, 2, 3, 4, 5, 6] }, b: { shape: [3, 3], data: [1, 2, 3, 4, 5, 6, 7, 8, 9] } } }));
  t.throws(() => decodeJsonBody(body, PAIR), { code: 'E_SHAPE_MISMATCH', message: /dim "N" is 2 in input "a" and 3 in input "b"/ } as never);
  const same = Buffer.from(JSON.stringify({ inputs: { a: { data: [[1, 2, 3]] }, b: { shape: [1, 3], data: [1, 2, 3] } } }));
  t.deepEqual(decodeJsonBody(same, PAIR).map((d) => d.shape), [[1, 3], [1, 3]]);
});

test('decodeNpyBody: one dim name twice in one input must be one size', (t) => {
  const spec: InputSpec[] = [{ name: 'x', type: 'float32', shape: ['N', 'N'] }];
  t.throws(() => decodeNpyBody(Buffer.from(encodeNpy(new Float32Array(6), [2, 3])), spec), { code: 'E_SHAPE_MISMATCH' } as never);
  t.deepEqual(decodeNpyBody(Buffer.from(encodeNpy(new Float32Array(4), [2, 2])), spec)[0].shape, [2, 2]);
});
