import test from 'ava';
import { serverTarget, type ServerCase } from '../../tools/fuzzing/targets.js';
import { checkCases, fuzzTest } from '../helpers/fuzz.js';

fuzzTest(test, serverTarget);

const json = (v: unknown) => ({ kind: 'bytes' as const, body: new Uint8Array(Buffer.from(JSON.stringify(v))) });
const post = (model: string, body: ServerCase['body']): ServerCase => ({ model, method: 'POST', path: 'infer', rawPath: '/', contentType: null, accept: null, body });

test('fuzz http-server regressions: a batch size that differs between two inputs is a 400, not ONNX Runtime\'s 500', async (t) => {
  await checkCases(t, serverTarget, [
    post('pair', json({ inputs: { a: { shape: [2, 3], data: [1, 2, 3, 4, 5, 6] }, b: { shape: [3, 3], data: [1, 2, 3, 4, 5, 6, 7, 8, 9] } } })),
    post('pair', json({ inputs: { a: { data: [[1, 2, 3]] }, b: { data: [[1, 2, 3], [4, 5, 6]] } } })),
  ]);
});
