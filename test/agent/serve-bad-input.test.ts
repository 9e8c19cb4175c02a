import test from 'ava';
import type { ExecutionContext } from 'ava';
import { writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { startServer } from '../../agent/serve/server.js';
import { staticModels } from '../../agent/serve/static-models.js';
import { encodeNpy } from '../../quant/npy.js';
import { FMNIST, tempDir } from '../helpers/fixtures.js';
import { rng } from '../helpers/random.js';
import { errorCode, fixedReshapeModel, idsModel, pairModel, RecordingSink, request, sampleValue } from '../helpers/serve.js';
import type { Reply, RequestOptions, Target } from '../helpers/serve.js';

const MAX_BODY = 256 * 1024;
const SAMPLE = 784;

async function serve(t: ExecutionContext) {
  const dir = tempDir(t, 'edgeq-serve-');
  pairModel(join(dir, 'pair.onnx'));
  idsModel(join(dir, 'ids.onnx'));
  const sink = new RecordingSink();
  const srv = await startServer({
    socket: join(dir, 'edgeq.sock'),
    threads: 1,
    maxBodyBytes: MAX_BODY,
    models: staticModels([
      { name: 'fmnist', version: 1, kind: 'fp32', path: FMNIST.model },
      { name: 'pair', version: 3, kind: 'fp32', path: join(dir, 'pair.onnx') },
      { name: 'ids', version: 1, kind: 'fp32', path: join(dir, 'ids.onnx') },
    ]),
    capture: sink,
  });
  t.teardown(() => srv.close());
  return { srv, sink, target: { socketPath: srv.socket! } as Target };
}

const zeros = (n: number) => Array.from({ length: n }, () => 0);
const fm = (input: unknown) => JSON.stringify({ inputs: { input } });
const FM_INFER = '/v1/models/fmnist/infer';

interface Case {
  what: string;
  req: RequestOptions;
  status: number;
  code: string;
}

function post(path: string, body: string | Uint8Array, headers: Record<string, string> = {}): RequestOptions {
  return { method: 'POST', path, body, headers };
}

const npyHeaders = { 'Content-Type': 'application/x-npy' };

const CASES: Case[] = [
  // The body is not the request format.
  { what: 'malformed JSON', req: post(FM_INFER, '{"inputs": {"input": {"shape": [1,1,28,28], "data": [1,2,'), status: 400, code: 'E_BAD_JSON' },
  { what: 'empty body', req: post(FM_INFER, ''), status: 400, code: 'E_BAD_JSON' },
  { what: 'not UTF-8 JSON', req: post(FM_INFER, new Uint8Array([0xff, 0xfe, 0x7b, 0x7d])), status: 400, code: 'E_BAD_JSON' },
  { what: 'JSON array at the top', req: post(FM_INFER, '[1, 2, 3]'), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'no "inputs"', req: post(FM_INFER, '{}'), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'unknown top-level field', req: post(FM_INFER, JSON.stringify({ inputs: {}, extra: 1 })), status: 400, code: 'E_INPUT_INVALID' },
  { what: '"inputs" is an array', req: post(FM_INFER, '{"inputs": []}'), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'input is a bare array', req: post(FM_INFER, fm(zeros(SAMPLE))), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'unknown field in an input', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE), scale: 2 })), status: 400, code: 'E_INPUT_INVALID' },
  // Inputs.
  { what: 'missing input', req: post(FM_INFER, '{"inputs": {}}'), status: 400, code: 'E_INPUT_MISSING' },
  { what: 'extra input', req: post(FM_INFER, JSON.stringify({ inputs: { input: { shape: [1, 1, 28, 28], data: zeros(SAMPLE) }, mask: { shape: [1], data: [1] } } })), status: 400, code: 'E_INPUT_UNKNOWN' },
  { what: 'input named __proto__', req: post(FM_INFER, '{"inputs": {"__proto__": {"shape": [1], "data": [1]}}}'), status: 400, code: 'E_INPUT_UNKNOWN' },
  { what: 'one of two inputs missing', req: post('/v1/models/pair/infer', JSON.stringify({ inputs: { a: { shape: [1, 3], data: [1, 2, 3] } } })), status: 400, code: 'E_INPUT_MISSING' },
  // Shapes.
  { what: 'wrong fixed dim', req: post(FM_INFER, fm({ shape: [1, 1, 28, 27], data: zeros(28 * 27) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'wrong rank', req: post(FM_INFER, fm({ shape: [784], data: zeros(SAMPLE) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'flat data without shape', req: post(FM_INFER, fm({ data: zeros(SAMPLE) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'data shorter than the shape', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE - 1) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'data longer than the shape', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE + 1) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'huge shape, little data', req: post(FM_INFER, fm({ shape: [1e9, 1, 28, 28], data: zeros(4) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'negative dim', req: post(FM_INFER, fm({ shape: [-1, 1, 28, 28], data: zeros(SAMPLE) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'fractional dim', req: post(FM_INFER, fm({ shape: [0.5, 1, 28, 28], data: zeros(SAMPLE) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'shape is a string', req: post(FM_INFER, fm({ shape: '1,1,28,28', data: zeros(SAMPLE) })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'empty batch', req: post(FM_INFER, fm({ shape: [0, 1, 28, 28], data: [] })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'ragged nested data', req: post(FM_INFER, fm({ data: [[zeros(28).map(() => zeros(28))], [[zeros(28)]]] })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'nested data disagreeing with shape', req: post(FM_INFER, fm({ shape: [1, 1, 784, 1], data: [[zeros(28).map(() => zeros(28))]] })), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'nesting 5000 deep', req: post(FM_INFER, `{"inputs": {"input": {"data": ${'['.repeat(5000)}${']'.repeat(5000)}}}}`), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'array where a number belongs in flat data', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: [[0], ...zeros(SAMPLE - 1)] })), status: 400, code: 'E_SHAPE_MISMATCH' },
  // Values and dtypes.
  { what: 'strings as data', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE).map(() => 'x') })), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'null in data', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: [null, ...zeros(SAMPLE - 1)] })), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'object in nested data', req: post(FM_INFER, fm({ data: [[[...zeros(27).map(() => zeros(28)), [...zeros(27), {}]]]] })), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'data is a string', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: 'AAAA' })), status: 400, code: 'E_INPUT_INVALID' },
  { what: 'stated dtype differs from the model', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE), dtype: 'int64' })), status: 400, code: 'E_DTYPE_MISMATCH' },
  { what: 'fractions for an int64 input', req: post('/v1/models/ids/infer', JSON.stringify({ inputs: { ids: { shape: [2], data: [1, 2.5] } } })), status: 400, code: 'E_DTYPE_MISMATCH' },
  { what: 'int64 out of range', req: post('/v1/models/ids/infer', JSON.stringify({ inputs: { ids: { shape: [1], data: ['99999999999999999999'] } } })), status: 400, code: 'E_DTYPE_MISMATCH' },
  { what: 'unsafe integer for int64', req: post('/v1/models/ids/infer', '{"inputs": {"ids": {"shape": [1], "data": [9007199254740993]}}}'), status: 400, code: 'E_DTYPE_MISMATCH' },
  { what: 'boolean for int64', req: post('/v1/models/ids/infer', JSON.stringify({ inputs: { ids: { shape: [1], data: [true] } } })), status: 400, code: 'E_INPUT_INVALID' },
  // .npy bodies.
  { what: '.npy of the wrong dtype', req: post(FM_INFER, encodeNpy(new Float64Array(SAMPLE), [1, 1, 28, 28]), npyHeaders), status: 400, code: 'E_DTYPE_MISMATCH' },
  { what: '.npy of the wrong shape', req: post(FM_INFER, encodeNpy(new Float32Array(SAMPLE), [1, 28, 28]), npyHeaders), status: 400, code: 'E_SHAPE_MISMATCH' },
  { what: 'truncated .npy', req: post(FM_INFER, encodeNpy(new Float32Array(SAMPLE), [1, 1, 28, 28]).subarray(0, 500), npyHeaders), status: 400, code: 'E_NPY_INVALID' },
  { what: '.npy with trailing bytes', req: post(FM_INFER, Buffer.concat([encodeNpy(new Float32Array(SAMPLE), [1, 1, 28, 28]), Buffer.from('xx')]), npyHeaders), status: 400, code: 'E_NPY_INVALID' },
  { what: 'garbage as .npy', req: post(FM_INFER, Buffer.from('this is not numpy at all'), { 'Content-Type': 'application/octet-stream' }), status: 400, code: 'E_NPY_INVALID' },
  { what: 'JSON sent as .npy', req: post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE) }), npyHeaders), status: 400, code: 'E_NPY_INVALID' },
  { what: 'big-endian .npy', req: post(FM_INFER, Buffer.from(Buffer.from(encodeNpy(new Float32Array(SAMPLE), [1, 1, 28, 28])).toString('latin1').replace("'<f4'", "'>f4'"), 'latin1'), npyHeaders), status: 400, code: 'E_DTYPE_MISMATCH' },
  { what: '.npy for a two-input model', req: post('/v1/models/pair/infer', encodeNpy(new Float32Array(3), [1, 3]), npyHeaders), status: 400, code: 'E_INPUT_MISSING' },
  // Size.
  { what: 'body over the cap (Content-Length)', req: post(FM_INFER, Buffer.alloc(MAX_BODY + 1, 0x20)), status: 413, code: 'E_BODY_TOO_LARGE' },
  { what: 'body over the cap (chunked)', req: { ...post(FM_INFER, Buffer.alloc(MAX_BODY + 300_000, 0x20)), chunked: true }, status: 413, code: 'E_BODY_TOO_LARGE' },
  { what: 'declared 1 TB body, none sent', req: { method: 'POST', path: FM_INFER, headers: { 'Content-Length': String(2 ** 40) } }, status: 413, code: 'E_BODY_TOO_LARGE' },
  // Models and paths.
  { what: 'unknown model', req: post('/v1/models/nope/infer', '{}'), status: 404, code: 'E_MODEL_UNKNOWN' },
  { what: 'dot-dot', req: post('/v1/models/../infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'encoded dot-dot', req: post('/v1/models/%2e%2e/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'encoded dot-dot with a slash', req: post('/v1/models/%2E%2E%2Ffmnist/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'slash in the name', req: post('/v1/models/a/b/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'encoded slash', req: post('/v1/models/a%2Fb/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'traversal to a file', req: post('/v1/models/..%2F..%2Fetc%2Fpasswd/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'bad percent-encoding', req: post('/v1/models/%zz/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'NUL byte', req: post('/v1/models/fmnist%00/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'hidden-file name', req: post('/v1/models/.fmnist/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'empty name', req: post('/v1/models//infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'name of 65 characters', req: post(`/v1/models/${'a'.repeat(65)}/infer`, '{}'), status: 400, code: 'E_MODEL_NAME' },
  { what: 'backslash', req: post('/v1/models/..%5Cfmnist/infer', '{}'), status: 400, code: 'E_MODEL_NAME' },
  // Routes and methods.
  { what: 'GET on infer', req: { path: FM_INFER }, status: 405, code: 'E_METHOD_NOT_ALLOWED' },
  { what: 'PUT on infer', req: { method: 'PUT', path: FM_INFER, body: '{}' }, status: 405, code: 'E_METHOD_NOT_ALLOWED' },
  { what: 'POST on health', req: post('/v1/health', '{}'), status: 405, code: 'E_METHOD_NOT_ALLOWED' },
  { what: 'DELETE on metrics', req: { method: 'DELETE', path: '/metrics' }, status: 405, code: 'E_METHOD_NOT_ALLOWED' },
  { what: 'unknown route', req: { path: '/v2/models' }, status: 404, code: 'E_NOT_FOUND' },
  { what: 'root', req: { path: '/' }, status: 404, code: 'E_NOT_FOUND' },
  { what: 'model without /infer', req: { path: '/v1/models/fmnist' }, status: 404, code: 'E_NOT_FOUND' },
  { what: 'trailing slash', req: { path: '/v1/health/' }, status: 404, code: 'E_NOT_FOUND' },
  { what: 'absolute-form URL', req: { path: 'http://evil.example/v1/health' }, status: 404, code: 'E_NOT_FOUND' },
];

test('serve: every bad request gets its 4xx status and code, nothing is captured, and the server keeps serving', async (t) => {
  const { target, sink } = await serve(t);
  for (const c of CASES) {
    let r: Reply;
    try {
      r = await request(target, c.req);
    } catch (e) {
      t.fail(`${c.what}: ${(e as Error).message}`);
      continue;
    }
    t.is(r.status, c.status, `${c.what}: ${r.body.toString().slice(0, 300)}`);
    t.is(errorCode(r), c.code, c.what);
    t.regex(String(r.headers['content-type']), /^application\/json/, c.what);
    const message = (r.json().error as { message?: unknown }).message;
    t.true(typeof message === 'string' && message.length > 10, c.what);
    if (c.status === 405) t.truthy(r.headers.allow, c.what);
  }
  const health = await request(target, { path: '/v1/health' });
  t.is(health.status, 200);
  t.is(sink.offers.length, 0);

  // Good requests on the same server: one offer each.
  const good = await request(target, post(FM_INFER, fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE) })));
  t.is(good.status, 200, good.body.toString());
  const ids = await request(target, post('/v1/models/ids/infer', JSON.stringify({ inputs: { ids: { shape: [3], data: [1, '-4', 9007199254740991] } } })));
  t.is(ids.status, 200, ids.body.toString());
  t.deepEqual((ids.json().outputs as Record<string, unknown>).y, { shape: [3], dtype: 'float32', data: [2, -8, Math.fround(2 * 9007199254740991)] });
  const pair = await request(target, post('/v1/models/pair/infer', JSON.stringify({ inputs: { a: { data: [[1, 2, 3]] }, b: { shape: [1, 3], data: [10, 20, 30] } } })));
  t.is(pair.status, 200, pair.body.toString());
  t.like(pair.json(), { model: 'pair', version: 3, outputs: { y: { shape: [1, 3], dtype: 'float32', data: [11, 22, 33] } } });
  await sink.waitFor(3);
  t.is(sink.offers.length, 3);
  t.deepEqual(sink.offers.map((o) => o.model), ['fmnist', 'ids', 'pair']);
  t.deepEqual(sink.offers[1].tensors, [{ name: 'ids', dtype: 'int64', shape: [3], data: new Uint8Array(new BigInt64Array([1n, -4n, 9007199254740991n]).buffer) }]);
  t.deepEqual(sink.offers[2].tensors.map((s) => s.name), ['a', 'b']);
});

/** Sends raw bytes on a fresh connection and returns what comes back before the server closes it. */
function raw(target: Target, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const s = 'socketPath' in target ? connect(target.socketPath) : connect(target.port, '127.0.0.1');
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => {});
    s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    s.end(bytes);
  });
}

test('serve: malformed HTTP gets a JSON 400 and the server keeps serving', async (t) => {
  const { target } = await serve(t);
  for (const bytes of ['GARBAGE\r\n\r\n', 'GET / HTTP/9.9\r\n\r\n', 'POST /v1/models/fmnist/infer HTTP/1.1\r\nContent-Length: abc\r\n\r\n', 'GET /v1/health HTTP/1.1\r\nHost: x\r\nX: ' + 'a'.repeat(20000) + '\r\n\r\n', '\x00\x01\x02\x03\r\n\r\n']) {
    const reply = await raw(target, Buffer.from(bytes, 'latin1'));
    t.regex(reply, /^HTTP\/1\.1 4\d\d /, JSON.stringify(bytes.slice(0, 40)));
    t.regex(reply, /\{"error":\{"code":"E_BAD_REQUEST","message":"[^"]+"\}\}$/);
  }
  t.is((await request(target, { path: '/v1/health' })).status, 200);
});

test('serve: a client that disconnects mid-body does not disturb the server', async (t) => {
  const { target, sink } = await serve(t);
  for (let i = 0; i < 5; i++) {
    await raw(target, Buffer.from(`POST ${FM_INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"inputs": {"input": {"data": [1, 2`));
  }
  t.is((await request(target, { path: '/v1/health' })).status, 200);
  t.is(sink.offers.length, 0);
});

const PATH_CHARS = 'abz09.-_~%/2eEfF:@!$&\'()*+,;=';
const BODY_KEYS = ['inputs', 'input', 'shape', 'data', 'dtype', '__proto__', 'a', 'b', 'ids', ''];

test('serve: fuzz — random paths, methods, headers and bodies all get 4xx, nothing is captured, the server never falls over', async (t) => {
  const { target, sink } = await serve(t);
  const next = rng(20240611);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];
  const int = (n: number) => Math.floor(next() * n);
  const randomString = (chars: string, n: number) => Array.from({ length: n }, () => chars[int(chars.length)]).join('');
  const randomJson = (depth: number): unknown => {
    const k = int(depth > 3 ? 4 : 7);
    if (k === 0) return next() * 1000 - 500;
    if (k === 1) return randomString('abc"\\\u00e9\u2603', int(6));
    if (k === 2) return pick([null, true, false, 0, -1, 1e308, 1e-320]);
    if (k === 3) return int(10);
    if (k === 4) return Array.from({ length: int(5) }, () => randomJson(depth + 1));
    return Object.fromEntries(Array.from({ length: int(4) }, () => [pick(BODY_KEYS), randomJson(depth + 1)]));
  };
  const valid = Buffer.from(fm({ shape: [1, 1, 28, 28], data: zeros(SAMPLE) }));
  const validNpy = Buffer.from(encodeNpy(new Float32Array(SAMPLE), [1, 1, 28, 28]));
  const codes = new Map<string, number>();
  for (let i = 0; i < 300; i++) {
    // Mostly well-addressed POSTs, so most garbage reaches the body parsers.
    const model = pick(['fmnist', 'fmnist', 'fmnist', 'pair', 'ids', 'nope', randomString(PATH_CHARS, 1 + int(12))]);
    const path = next() < 0.8 ? `/v1/models/${model}/infer` : pick([`/${randomString(PATH_CHARS, int(30))}`, `/v1/models/${randomString(PATH_CHARS, int(20))}`]);
    const method = next() < 0.85 ? 'POST' : pick(['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']);
    let body: Buffer;
    switch (int(6)) {
      case 0: body = Buffer.from(Array.from({ length: int(2000) }, () => int(256))); break;
      case 1: body = Buffer.from(JSON.stringify(randomJson(0)) ?? 'null'); break;
      case 2: body = valid.subarray(0, int(valid.length)); break; // truncated JSON is never valid
      case 3: body = validNpy.subarray(0, int(validNpy.length)); break; // nor is a truncated .npy
      case 4: body = Buffer.from(JSON.stringify({ inputs: Object.fromEntries([[pick(BODY_KEYS), randomJson(1)]]) })); break;
      default: body = Buffer.concat([validNpy.subarray(0, 10 + int(100)), Buffer.from(randomString('{}\'():, abcdefhiklnoprstuyFT0123456789<>|', int(200)))]);
    }
    const contentType = pick(['application/json', 'application/x-npy', 'application/octet-stream', 'text/plain', undefined]);
    const headers: Record<string, string> = contentType ? { 'Content-Type': contentType } : {};
    if (next() < 0.2) headers.Accept = 'application/x-npy';
    let r: Reply;
    try {
      r = await request(target, { method, path, headers, body: method === 'GET' ? undefined : body });
    } catch (e) {
      t.fail(`request ${i} (${method} ${path}) failed: ${(e as Error).message}`);
      continue;
    }
    const key = `${r.status} ${errorCode(r)}`;
    codes.set(key, (codes.get(key) ?? 0) + 1);
    if (r.status < 400 || r.status >= 500) t.fail(`request ${i}: ${method} ${path} → ${r.status} ${r.body.toString().slice(0, 200)}`);
    else t.truthy(errorCode(r), `request ${i}: no error code`);
  }
  t.log(`replies: ${[...codes].sort().map(([s, n]) => `${s}×${n}`).join(', ')}`);
  // Raw garbage at the HTTP layer.
  let answered = 0;
  for (let i = 0; i < 30; i++) {
    const reply = await raw(target, Buffer.from(Array.from({ length: 1 + int(300) }, () => int(256))));
    t.true(reply === '' || /^HTTP\/1\.1 4\d\d /.test(reply), reply.slice(0, 80));
    if (reply) answered++;
  }
  t.log(`raw garbage: ${answered} of 30 connections answered with a 4xx, the rest closed`);
  t.is((await request(target, { path: '/v1/health' })).status, 200);
  t.is(sink.offers.length, 0);
});

test('serve: an ONNX Runtime failure is a JSON 500 E_RUNTIME, a model that cannot load a JSON 500, and neither stops the server', async (t) => {
  const dir = tempDir(t, 'edgeq-serve-');
  fixedReshapeModel(join(dir, 'reshape.onnx'));
  writeFileSync(join(dir, 'broken.onnx'), 'not an onnx model');
  const sink = new RecordingSink();
  const logs: Array<Record<string, unknown>> = [];
  const srv = await startServer({
    socket: join(dir, 's.sock'),
    threads: 1,
    models: staticModels([
      { name: 'reshape', version: 1, kind: 'fp32', path: join(dir, 'reshape.onnx') },
      { name: 'broken', version: 1, kind: 'fp32', path: join(dir, 'broken.onnx') },
      { name: 'gone', version: 1, kind: 'fp32', path: join(dir, 'missing.onnx') },
    ]),
    capture: sink,
    log: (e) => logs.push(e),
  });
  t.teardown(() => srv.close());
  const target = { socketPath: srv.socket! };
  const body = (n: number) => JSON.stringify({ inputs: { x: { shape: [n, 4], data: zeros(4 * n) } } });
  const bad = await request(target, post('/v1/models/reshape/infer', body(2)));
  t.is(bad.status, 500);
  t.is(errorCode(bad), 'E_RUNTIME');
  t.regex(String(bad.headers['content-type']), /^application\/json/);
  const ok = await request(target, post('/v1/models/reshape/infer', body(1)));
  t.is(ok.status, 200, ok.body.toString());
  const broken = await request(target, post('/v1/models/broken/infer', body(1)));
  t.is(broken.status, 500);
  t.is(errorCode(broken), 'E_MODEL_INVALID');
  const gone = await request(target, post('/v1/models/gone/infer', body(1)));
  t.is(gone.status, 500);
  t.is(errorCode(gone), 'E_FILE_NOT_FOUND');
  t.like(logs.find((e) => e.event === 'model_load_failed' && e.model === 'broken'), { code: 'E_MODEL_INVALID' });
  t.is((await request(target, { path: '/v1/health' })).status, 200);
  await sink.waitFor(1);
  t.deepEqual(sink.offers.map((o) => o.model), ['reshape']);
  const m = srv.metrics();
  t.is(sampleValue(m, 'edgeq_requests_total{model="reshape",version="1",code="500"}'), 1);
  t.is(sampleValue(m, 'edgeq_request_errors_total{code="E_RUNTIME"}'), 1);
});

test('serve: with Expect: 100-continue, a body over the cap is refused before it is sent; one within it goes ahead', async (t) => {
  const { target } = await serve(t);
  const expect = (length: number, body: Buffer) =>
    new Promise<{ status: number; code?: string; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = httpRequest({ ...target, method: 'POST', path: FM_INFER, headers: { Expect: '100-continue', 'Content-Length': length, 'Content-Type': 'application/x-npy' }, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, code: JSON.parse(Buffer.concat(chunks).toString()).error?.code, continued }));
      });
      req.on('continue', () => {
        continued = true;
        req.end(body);
      });
      req.on('error', reject);
      req.flushHeaders();
    });
  const over = await expect(MAX_BODY + 1, Buffer.alloc(0));
  t.deepEqual(over, { status: 413, code: 'E_BODY_TOO_LARGE', continued: false });
  const npy = Buffer.from(encodeNpy(new Float32Array(SAMPLE), [1, 1, 28, 28]));
  const within = await expect(npy.length, npy);
  t.deepEqual(within, { status: 200, code: undefined, continued: true });
});
