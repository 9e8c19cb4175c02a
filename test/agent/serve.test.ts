import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { startServer, isLoopbackHost } from '../../agent/serve/server.js';
import type { ServerOptions } from '../../agent/serve/server.js';
import { modelFromSpec, staticModels } from '../../agent/serve/static-models.js';
import type { ModelSource, ServedModel } from '../../agent/serve/types.js';
import { Metrics } from '../../agent/serve/metrics.js';
import { EdgeqError } from '../../quant/errors.js';
import { encodeNpy, NpyFile, parseNpy } from '../../quant/npy.js';
import { openSession, ort } from '../../quant/runtime.js';
import { FMNIST, tempDir } from '../helpers/fixtures.js';
import { badExpositionLines, linearClassifier, RecordingSink, request, sampleValue } from '../helpers/serve.js';
import type { Target } from '../helpers/serve.js';

const SAMPLE = 784;
const SAMPLES = (() => {
  const f = NpyFile.open(FMNIST.test);
  try {
    return f.read(0, 8) as Float32Array;
  } finally {
    f.close();
  }
})();

function batch(start: number, n: number): Float32Array {
  return SAMPLES.slice(start * SAMPLE, (start + n) * SAMPLE);
}

/** Logits from ONNX Runtime run directly, with the server's session settings. */
async function direct(model: string, x: Float32Array, n: number): Promise<Float32Array> {
  const s = await openSession(model, { threads: 1, spin: false });
  try {
    const out = await s.run({ input: new ort.Tensor('float32', x, [n, 1, 28, 28]) });
    return Float32Array.from(out.logits.data as Float32Array);
  } finally {
    await s.release();
  }
}

const FMNIST_V1: ServedModel = { name: 'fmnist', version: 1, kind: 'fp32', path: FMNIST.model };

async function serve(t: ExecutionContext, extra: Partial<ServerOptions> = {}) {
  const dir = tempDir(t, 'edgeq-serve-');
  const sink = new RecordingSink();
  const logs: Array<Record<string, unknown>> = [];
  const srv = await startServer({ socket: join(dir, 'edgeq.sock'), threads: 1, models: staticModels([FMNIST_V1]), capture: sink, log: (e) => logs.push(e), ...extra });
  t.teardown(() => srv.close());
  const target: Target = { socketPath: srv.socket! };
  return { srv, sink, logs, target, dir };
}

function jsonBody(x: Float32Array, shape: number[]): string {
  return JSON.stringify({ inputs: { input: { shape, data: Array.from(x) } } });
}

function logitsOf(reply: Record<string, unknown>): { shape: number[]; dtype: string; data: Float32Array } {
  const o = (reply.outputs as Record<string, { shape: number[]; dtype: string; data: number[] }>).logits;
  return { shape: o.shape, dtype: o.dtype, data: Float32Array.from(o.data) };
}

test('serve: JSON inference over the Unix socket gives the logits ORT gives, and offers the input for capture once', async (t) => {
  const { target, sink } = await serve(t);
  const x = batch(0, 1);
  const r = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/json' }, body: jsonBody(x, [1, 1, 28, 28]) });
  t.is(r.status, 200, r.body.toString());
  t.regex(String(r.headers['content-type']), /^application\/json/);
  const j = r.json();
  t.is(j.model, 'fmnist');
  t.is(j.version, 1);
  t.is(j.kind, 'fp32');
  t.is(typeof j.latencyMs, 'number');
  t.true((j.latencyMs as number) >= 0);
  t.is(r.headers['x-edgeq-model-version'], '1');
  const logits = logitsOf(j);
  t.deepEqual(logits.shape, [1, 10]);
  t.is(logits.dtype, 'float32');
  t.deepEqual(logits.data, await direct(FMNIST.model, x, 1));
  await sink.waitFor(1);
  t.is(sink.offers.length, 1);
  const o = sink.offers[0];
  t.is(o.model, 'fmnist');
  t.is(o.version, 1);
  t.is(o.source, 'endpoint');
  t.is(o.tensors.length, 1);
  t.like(o.tensors[0], { name: 'input', dtype: 'float32', shape: [1, 1, 28, 28] });
  t.deepEqual(Buffer.from(o.tensors[0].data), Buffer.from(x.buffer, x.byteOffset, x.byteLength));
});

test('serve: a batch of 4 as nested arrays (shape implied) matches ORT run directly', async (t) => {
  const { target, sink } = await serve(t);
  const x = batch(2, 4);
  const nested = Array.from({ length: 4 }, (_, n) => [Array.from({ length: 28 }, (_, r) => Array.from(x.subarray(n * SAMPLE + r * 28, n * SAMPLE + r * 28 + 28)))]);
  const r = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body: JSON.stringify({ inputs: { input: { data: nested, dtype: 'float32' } } }) });
  t.is(r.status, 200, r.body.toString());
  const logits = logitsOf(r.json());
  t.deepEqual(logits.shape, [4, 10]);
  t.deepEqual(logits.data, await direct(FMNIST.model, x, 4));
  await sink.waitFor(1);
  t.is(sink.offers.length, 1);
  t.deepEqual(sink.offers[0].tensors[0].shape, [4, 1, 28, 28]);
  t.is(sink.offers[0].tensors[0].data.byteLength, 4 * SAMPLE * 4);
});

test('serve: an .npy body gives the same logits as JSON, as JSON or as .npy with Accept: application/x-npy', async (t) => {
  const { target, sink } = await serve(t);
  const x = batch(4, 4);
  const want = await direct(FMNIST.model, x, 4);
  const npy = encodeNpy(x, [4, 1, 28, 28]);
  const asJson = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/x-npy' }, body: npy });
  t.is(asJson.status, 200, asJson.body.toString());
  t.deepEqual(logitsOf(asJson.json()).data, want);
  const fromJson = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body: jsonBody(x, [4, 1, 28, 28]) });
  t.deepEqual(logitsOf(fromJson.json()).data, want);

  const asNpy = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/octet-stream', Accept: 'application/x-npy' }, body: npy });
  t.is(asNpy.status, 200);
  t.is(asNpy.headers['content-type'], 'application/x-npy');
  t.is(asNpy.headers['x-edgeq-model-version'], '1');
  t.is(asNpy.headers['x-edgeq-output'], 'logits');
  t.true(Number(asNpy.headers['x-edgeq-latency-ms']) >= 0);
  const back = parseNpy(asNpy.body);
  t.is(back.dtype, 'float32');
  t.deepEqual(back.shape, [4, 10]);
  t.deepEqual(back.data, want);
  await sink.waitFor(3);
  t.is(sink.offers.length, 3);
  t.deepEqual(sink.offers.map((o) => o.tensors[0].shape), [[4, 1, 28, 28], [4, 1, 28, 28], [4, 1, 28, 28]]);
});

test('serve: listens on an ephemeral 127.0.0.1 port when asked, with or without a socket', async (t) => {
  const dir = tempDir(t, 'edgeq-serve-');
  const srv = await startServer({ port: 0, socket: join(dir, 's.sock'), threads: 1, models: staticModels([FMNIST_V1]) });
  t.teardown(() => srv.close());
  t.true(typeof srv.port === 'number' && srv.port > 0);
  const x = batch(1, 1);
  const r = await request({ port: srv.port! }, { method: 'POST', path: '/v1/models/fmnist/infer', body: jsonBody(x, [1, 1, 28, 28]) });
  t.is(r.status, 200, r.body.toString());
  t.deepEqual(logitsOf(r.json()).data, await direct(FMNIST.model, x, 1));
  const h = await request({ socketPath: srv.socket! }, { path: '/v1/health' });
  t.is(h.status, 200);

  const tcpOnly = await startServer({ port: 0, models: staticModels([FMNIST_V1]) });
  t.teardown(() => tcpOnly.close());
  t.is(tcpOnly.socket, undefined);
  t.is((await request({ port: tcpOnly.port! }, { path: '/v1/health' })).status, 200);
});

test('serve: the socket is mode 0660 and removed on close; a stale socket is replaced, a regular file or a live socket never', async (t) => {
  const dir = tempDir(t, 'edgeq-serve-');
  const path = join(dir, 'edgeq.sock');
  // A stale socket: its server was killed without cleaning up.
  const child = spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  t.is(child.signal, 'SIGKILL');
  t.true(statSync(path).isSocket());
  const srv = await startServer({ socket: path, models: staticModels([FMNIST_V1]) });
  t.is(statSync(path).mode & 0o777, 0o660);
  t.is((await request({ socketPath: path }, { path: '/v1/health' })).status, 200);

  // A second server on the same live socket is refused, and the first keeps serving.
  const second = await t.throwsAsync(startServer({ socket: path, models: staticModels([FMNIST_V1]) }));
  t.is((second as EdgeqError).code, 'E_ADDRESS_IN_USE');
  t.is((await request({ socketPath: path }, { path: '/v1/health' })).status, 200);
  await srv.close();
  t.throws(() => statSync(path), { code: 'ENOENT' });

  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'keep me');
  const e = await t.throwsAsync(startServer({ socket: file, models: staticModels([FMNIST_V1]) }));
  t.is((e as EdgeqError).code, 'E_CONFIG_INVALID');
  t.regex(e!.message, /is not a socket/);
  t.is(readFileSync(file, 'utf8'), 'keep me');
});

test('serve: refuses a non-loopback host unless the config allows it explicitly, and a config with nowhere to listen', async (t) => {
  for (const host of ['0.0.0.0', '::', '192.0.2.7', '10.0.0.1', 'example.com', '127.1']) {
    const e = await t.throwsAsync(startServer({ port: 0, host, models: staticModels([FMNIST_V1]) }), undefined, host);
    t.is((e as EdgeqError).code, 'E_CONFIG_INVALID', host);
    t.regex(e!.message, /loopback/);
  }
  t.true(isLoopbackHost('127.0.0.1'));
  t.true(isLoopbackHost('127.0.0.53'));
  t.true(isLoopbackHost('::1'));
  t.true(isLoopbackHost('localhost'));
  t.false(isLoopbackHost('::ffff:10.0.0.1'));
  const none = await t.throwsAsync(startServer({ models: staticModels([FMNIST_V1]) }));
  t.is((none as EdgeqError).code, 'E_CONFIG_INVALID');
  const badPort = await t.throwsAsync(startServer({ port: 70000, models: staticModels([FMNIST_V1]) }));
  t.is((badPort as EdgeqError).code, 'E_CONFIG_INVALID');
});

test('serve: GET /v1/health and GET /v1/models describe the server', async (t) => {
  const { target } = await serve(t);
  const h = await request(target, { path: '/v1/health' });
  t.is(h.status, 200);
  const hj = h.json();
  t.is(hj.ok, true);
  t.is(hj.models, 1);
  t.is(typeof hj.uptimeS, 'number');
  const before = await request(target, { path: '/v1/models?x=1' });
  t.deepEqual(before.json(), { models: [{ name: 'fmnist', version: 1, kind: 'fp32', loadedVersion: null }] });
  await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body: jsonBody(batch(0, 1), [1, 1, 28, 28]) });
  const after = await request(target, { path: '/v1/models' });
  t.deepEqual(after.json(), { models: [{ name: 'fmnist', version: 1, kind: 'fp32', loadedVersion: 1 }] });
  const head = await request(target, { method: 'HEAD', path: '/v1/health' });
  t.is(head.status, 200);
  t.is(head.body.length, 0);
});

/** A model source whose answer for `fmnist` moves from version 1 to 2 after `switchAfter` resolves. */
class SwitchingSource implements ModelSource {
  calls = 0;
  constructor(private readonly v1: ServedModel, private readonly v2: ServedModel, private readonly switchAfter: number) {}
  resolve(name: string): ServedModel | undefined {
    if (name !== 'fmnist') return undefined;
    return this.calls++ < this.switchAfter ? this.v1 : this.v2;
  }
  list(): ServedModel[] {
    return [this.calls < this.switchAfter ? this.v1 : this.v2];
  }
}

test('serve: a new version from the model source is loaded and served, in-flight requests on the old one all succeed, and the old session is released', async (t) => {
  const dir = tempDir(t, 'edgeq-serve-');
  const v2path = join(dir, 'v2.onnx');
  linearClassifier(v2path, 7);
  const source = new SwitchingSource(FMNIST_V1, { name: 'fmnist', version: 2, kind: 'int8', path: v2path }, 6);
  const { target, sink, logs } = await serve(t, { models: source });
  const x = batch(0, 2);
  const want: Record<number, Float32Array> = { 1: await direct(FMNIST.model, x, 2), 2: await direct(v2path, x, 2) };
  t.notDeepEqual(want[1], want[2]);
  const body = jsonBody(x, [2, 1, 28, 28]);
  const goodReplies: number[] = [];
  const infer = async () => {
    const r = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body });
    if (r.status === 200) goodReplies.push(r.json().version as number);
    return r;
  };

  // Load version 1, then send a burst that straddles the switch.
  t.is((await infer()).json().version, 1);
  const burst = await Promise.all(Array.from({ length: 16 }, infer));
  const versions: number[] = [];
  for (const r of burst) {
    t.is(r.status, 200, r.body.toString());
    const j = r.json();
    versions.push(j.version as number);
    t.deepEqual(logitsOf(j).data, want[j.version as number], `version ${j.version}`);
  }
  t.log(`burst versions: ${versions.join(",")}`);
  t.true(versions.includes(1));
  // The new version answers once it is loaded; after that, only it answers.
  let seen = versions.includes(2);
  for (let i = 0; i < 50 && !seen; i++) seen = (await infer()).json().version === 2;
  t.true(seen);
  for (let i = 0; i < 3; i++) {
    const j = (await infer()).json();
    t.is(j.version, 2);
    t.is(j.kind, 'int8');
    t.deepEqual(logitsOf(j).data, want[2]);
  }
  for (let i = 0; i < 100 && !logs.some((e) => e.event === 'model_unloaded'); i++) await new Promise((r) => setTimeout(r, 10));
  t.like(logs.find((e) => e.event === 'model_switched'), { model: 'fmnist', from: 1, to: 2 });
  t.like(logs.find((e) => e.event === 'model_unloaded'), { model: 'fmnist', version: 1 });
  const listed = (await request(target, { path: '/v1/models' })).json();
  t.deepEqual(listed, { models: [{ name: 'fmnist', version: 2, kind: 'int8', loadedVersion: 2 }] });
  // Each good request was offered once, under the version that answered it.
  await sink.waitFor(goodReplies.length);
  t.is(sink.offers.length, goodReplies.length);
  t.deepEqual(sink.offers.map((o) => o.version).sort(), goodReplies.sort());
});

test('serve: /metrics is valid Prometheus text and its counters increase', async (t) => {
  const { target, srv, sink } = await serve(t);
  const first = await request(target, { path: '/metrics' });
  t.is(first.status, 200);
  t.is(first.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  t.deepEqual(badExpositionLines(first.body.toString()), []);
  for (const family of ['edgeq_requests_total counter', 'edgeq_request_errors_total counter', 'edgeq_inference_latency_seconds histogram', 'edgeq_captured_samples gauge', 'edgeq_captured_bytes gauge']) {
    t.true(first.body.toString().includes(`# TYPE ${family}\n`), family);
  }
  const ok = '{model="fmnist",version="1",code="200"}';
  const body = jsonBody(batch(0, 2), [2, 1, 28, 28]);
  await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body });
  await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body: '{"inputs":' });
  await sink.waitFor(1);
  const m1 = (await request(target, { path: '/metrics' })).body.toString();
  t.deepEqual(badExpositionLines(m1), []);
  t.is(sampleValue(m1, `edgeq_requests_total${ok}`), 1);
  t.is(sampleValue(m1, 'edgeq_requests_total{model="fmnist",version="1",code="400"}'), 1);
  t.is(sampleValue(m1, 'edgeq_request_errors_total{code="E_BAD_JSON"}'), 1);
  t.is(sampleValue(m1, 'edgeq_inference_latency_seconds_count{model="fmnist",version="1"}'), 1);
  t.is(sampleValue(m1, 'edgeq_inference_latency_seconds_bucket{model="fmnist",version="1",le="+Inf"}'), 1);
  t.is(sampleValue(m1, 'edgeq_captured_samples{model="fmnist"}'), 2);
  t.is(sampleValue(m1, 'edgeq_captured_bytes{model="fmnist"}'), 2 * SAMPLE * 4);

  await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body });
  await request(target, { method: 'POST', path: '/v1/models/nope/infer', body });
  await sink.waitFor(2);
  const m2 = srv.metrics();
  t.deepEqual(badExpositionLines(m2), []);
  t.is(sampleValue(m2, `edgeq_requests_total${ok}`), 2);
  t.is(sampleValue(m2, 'edgeq_request_errors_total{code="E_MODEL_UNKNOWN"}'), 1);
  t.is(sampleValue(m2, 'edgeq_inference_latency_seconds_count{model="fmnist",version="1"}'), 2);
  t.is(sampleValue(m2, 'edgeq_captured_samples{model="fmnist"}'), 4);
  // Buckets are cumulative.
  const buckets = m2.split('\n').filter((l) => l.startsWith('edgeq_inference_latency_seconds_bucket')).map((l) => Number(l.split(' ')[1]));
  t.is(buckets.length, 14);
  t.true(buckets.every((v, i) => i === 0 || v >= buckets[i - 1]));
  // An unknown model name never becomes a label.
  t.false(m2.includes('nope'));
});

test('serve: metric label values are escaped', (t) => {
  const m = new Metrics();
  m.request('a', 1, 200);
  const text = m.render({ 'we"ird\\na\nme': { samples: 3, bytes: 12 } });
  t.deepEqual(badExpositionLines(text), []);
  t.true(text.includes('edgeq_captured_samples{model="we\\"ird\\\\na\\nme"} 3\n'));
});

test('serve: modelFromSpec reads NAME=FILE and tells int8 from fp32 by the graph', (t) => {
  const dir = tempDir(t, 'edgeq-serve-');
  t.deepEqual(modelFromSpec(`mnist=${FMNIST.model}`), { name: 'mnist', version: 1, kind: 'fp32', path: FMNIST.model });
  t.is(modelFromSpec(FMNIST.model).name, 'model');
  t.is((t.throws(() => modelFromSpec(`../x=${FMNIST.model}`)) as EdgeqError).code, 'E_ARGUMENT');
  t.is((t.throws(() => modelFromSpec(`m=${join(dir, 'missing.onnx')}`)) as EdgeqError).code, 'E_FILE_NOT_FOUND');
  t.is((t.throws(() => staticModels([FMNIST_V1, FMNIST_V1])) as EdgeqError).code, 'E_CONFIG_INVALID');
  t.is((t.throws(() => staticModels([{ ...FMNIST_V1, name: 'a/b' }])) as EdgeqError).code, 'E_CONFIG_INVALID');
});

test('serve: close() lets an in-flight request finish, then refuses connections', async (t) => {
  let arrived!: () => void;
  const inside = new Promise<void>((r) => (arrived = r));
  const source: ModelSource = {
    resolve: (name) => {
      arrived();
      return name === 'fmnist' ? FMNIST_V1 : undefined;
    },
    list: () => [FMNIST_V1],
  };
  const { srv, target } = await serve(t, { models: source });
  const x = batch(3, 1);
  const body = Buffer.from(jsonBody(x, [1, 1, 28, 28]));
  // Headers and half the body, then close(), then the rest.
  const reply = new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = httpRequest({ ...target, method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Length': body.length }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, text: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.write(body.subarray(0, 100));
    void inside.then(() => {
      const closed = srv.close();
      req.end(body.subarray(100));
      return closed;
    });
  });
  const r = await reply;
  t.is(r.status, 200, r.text);
  t.deepEqual(Float32Array.from((JSON.parse(r.text).outputs.logits.data as number[])), await direct(FMNIST.model, x, 1));
  await srv.close();
  await t.throwsAsync(request(target, { path: '/v1/health' }));
});
