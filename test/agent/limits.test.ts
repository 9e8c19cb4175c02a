/**
 * Resource bounds at their edges (docs/limits.md lists every limit and where it is tested):
 * the value at the limit is accepted, one more is refused or trimmed. Real store files, a real
 * endpoint with ONNX Runtime, a real http server for deploys.
 */
import test from 'ava';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkFileSize, download } from '../../agent/daemon/import-source.js';
import { parseConfig, storeLimits } from '../../agent/config.js';
import { deployManifest } from '../../agent/deploy.js';
import { parseCommand } from '../../agent/protocol/messages.js';
import { startServer as startEndpointServer, staticModels } from '../../agent/serve/index.js';
import { storeFile } from '../../agent/state.js';
import { DEFAULT_STORE_LIMITS, Store, type OutboxMessage } from '../../agent/store/index.js';
import { encodeNpy } from '../../quant/npy.js';
import { tempDir } from '../helpers/fixtures.js';
import { errorCode, request } from '../helpers/serve.js';
import { addModel, f32, one, tempStore } from '../helpers/store.js';
import { manifestFor, modelVariant, startServer } from '../deploy/helpers.js';
import { writeModel } from '../../quant/onnx/model.js';
import { buildModel, floatInput, makeNode } from '../helpers/models.js';

const reply = (state: string, i: number): OutboxMessage => ({ topic: 'edgeq/v1/d/reply', payload: JSON.stringify({ cmdId: `c${i}`, state }), kind: 'reply' });
const telemetry = (i: number): OutboxMessage => ({ topic: 'edgeq/v1/d/telemetry', payload: JSON.stringify({ i }), kind: 'telemetry' });
const report = (i: number): OutboxMessage => ({ topic: 'edgeq/v1/d/report', payload: JSON.stringify({ report: i }), kind: 'report' });

test('outbox: at maxMessages nothing is dropped; past it the oldest telemetry goes first, then non-final replies, never final replies or reports', (t) => {
  const store = tempStore(t);
  store.setLimits({ outboxMaxMessages: 6 });
  store.enqueueOutbox(telemetry(1));
  store.enqueueOutbox(reply('running', 2));
  store.enqueueOutbox(reply('succeeded', 3));
  store.enqueueOutbox(report(4));
  store.enqueueOutbox(telemetry(5));
  store.enqueueOutbox(reply('accepted', 6));
  t.like(store.outboxState(), { messages: 6, dropped: 0, full: false }, 'exactly at the cap');
  store.enqueueOutbox(reply('failed', 7));
  t.like(store.outboxState(), { messages: 6, dropped: 1 });
  t.deepEqual(store.peekOutbox(100).map((m) => JSON.parse(m.payload) as unknown), [
    { cmdId: 'c2', state: 'running' }, { cmdId: 'c3', state: 'succeeded' }, { report: 4 }, { i: 5 }, { cmdId: 'c6', state: 'accepted' }, { cmdId: 'c7', state: 'failed' },
  ], 'the oldest telemetry went');
  store.enqueueOutbox(report(8));
  store.enqueueOutbox(reply('cancelled', 9));
  t.deepEqual(store.peekOutbox(100).map((m) => m.payload).filter((p) => p.includes('"i"')), [], 'then the other telemetry');
  store.enqueueOutbox(report(10));
  // Now only final replies and reports (6 of them) — the cap holds them all and says full.
  const kept = store.peekOutbox(100).map((m) => JSON.parse(m.payload) as { state?: string; report?: number });
  t.deepEqual(kept.map((k) => k.state ?? `report ${k.report}`), ['succeeded', 'report 4', 'failed', 'report 8', 'cancelled', 'report 10']);
  t.like(store.outboxState(), { messages: 6, dropped: 4, full: true });
  // Nothing droppable left: a further final answer is kept beyond the cap rather than lost.
  store.enqueueOutbox(reply('succeeded', 11));
  t.like(store.outboxState(), { messages: 7, full: true });
  store.ackOutbox(store.peekOutbox(1)[0].id);
  store.ackOutbox(store.peekOutbox(1)[0].id);
  t.like(store.outboxState(), { messages: 5, full: false });
});

test('outbox: the byte cap works the same way, at the edge', (t) => {
  const store = tempStore(t);
  const m = telemetry(1);
  const size = Buffer.byteLength(m.payload);
  store.setLimits({ outboxMaxBytes: 3 * size });
  for (let i = 0; i < 3; i++) store.enqueueOutbox(telemetry(i));
  t.like(store.outboxState(), { messages: 3, bytes: 3 * size, dropped: 0 });
  store.enqueueOutbox(telemetry(3));
  t.like(store.outboxState(), { messages: 3, bytes: 3 * size, dropped: 1 });
  t.deepEqual(store.peekOutbox(10).map((r) => (JSON.parse(r.payload) as { i: number }).i), [1, 2, 3]);
});

test('store.maxBytes: samples are refused as store-full once the pages in use plus the sample would pass the cap', (t) => {
  const store = tempStore(t);
  addModel(store, 'm', [{ name: 'x', dtype: 'float32', shape: ['N', 1024] }]);
  store.setPolicy('m', { rate: 1 });
  const sample = (v: number) => one(v, 'test', { tensors: [f32(new Float32Array(1024).fill(v), 'x', [1, 1024])] });
  const per = 4096;
  store.setLimits({ maxBytes: store.usedBytes() + 2 * per });
  const out = store.offerSamples('m', [sample(1), sample(2), sample(3)]);
  t.deepEqual(out, ['kept', 'kept', 'store-full']);
  t.like(store.captureStats('m'), { kept: 2, storeFull: 1, seen: 3 });
  // Raising the cap lets capture go on.
  store.setLimits({ maxBytes: DEFAULT_STORE_LIMITS.maxBytes });
  t.deepEqual(store.offerSamples('m', [sample(4)]), ['kept']);
});

test('runs.keep: the newest finished runs are kept, older ones deleted when a run is created; running ones stay', (t) => {
  const store = tempStore(t);
  store.setLimits({ keepRuns: 2 });
  const ids: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = store.createRun('quantize', { i });
    store.startRun(r.id);
    store.finishRun(r.id, { i });
    ids.push(r.id);
  }
  // Created the third while two were finished: at the edge, both stay.
  t.is(store.listRuns({ limit: 100 }).length, 3);
  const running = store.createRun('quantize', { i: 3 });
  store.startRun(running.id);
  const left = store.listRuns({ limit: 100 }).map((r) => r.id);
  t.false(left.includes(ids[0]), 'the oldest finished run went');
  t.true(left.includes(ids[1]) && left.includes(ids[2]) && left.includes(running.id));
  store.createRun('quantize', { i: 4 });
  t.true(store.listRuns({ limit: 100 }).some((r) => r.id === running.id), 'a running run is never pruned');
});

test('commands.maxBytes: a payload of exactly the limit is parsed, one byte more is E_PAYLOAD_TOO_LARGE', (t) => {
  const base = JSON.stringify({ id: 'c1', type: 'status', args: {} });
  const max = 200;
  const padded = base.slice(0, -1) + ' '.repeat(max - base.length) + '}';
  t.is(Buffer.byteLength(padded), max);
  const at = parseCommand(padded, max);
  t.true(at.ok, JSON.stringify(at));
  const over = parseCommand(padded + ' ', max);
  t.false(over.ok);
  t.is(!over.ok && over.code, 'E_PAYLOAD_TOO_LARGE');
});

test('serve.maxElements and serve.maxBodyBytes: a tensor of exactly maxElements is served, one more row is 413; the body cap likewise', async (t) => {
  const dir = tempDir(t, 'edgeq-limits-');
  writeModel(buildModel([makeNode('Relu', ['x'], ['y'], 'relu')], [floatInput('x', ['N', 4])], [floatInput('y', ['N', 4])], []), join(dir, 'relu.onnx'));
  const json = (rows: number) => JSON.stringify({ inputs: { x: { shape: [rows, 4], data: new Array<number>(rows * 4).fill(1) } } });
  const maxBody = 400; // more than the .npy bodies below; JSON bodies are padded to it with spaces
  const srv = await startEndpointServer({
    socket: join(dir, 's.sock'), threads: 1, maxElements: 8, maxBodyBytes: maxBody,
    models: staticModels([{ name: 'relu', version: 1, kind: 'fp32', path: join(dir, 'relu.onnx') }]), log: () => {},
  });
  t.teardown(() => srv.close());
  const post = (body: string | Uint8Array, type = 'application/json') => request({ socketPath: srv.socket! }, { method: 'POST', path: '/v1/models/relu/infer', headers: { 'Content-Type': type }, body });
  t.is((await post(json(2))).status, 200, '8 elements: at the limit');
  const over = await post(json(3));
  t.is(over.status, 413);
  t.is(errorCode(over), 'E_TENSOR_TOO_LARGE');
  t.regex(over.json().error ? String((over.json().error as { message: string }).message) : '', /12 elements, more than the 8/);
  const npyOver = await post(encodeNpy(new Float32Array(12), [3, 4]), 'application/x-npy');
  t.is(errorCode(npyOver), 'E_TENSOR_TOO_LARGE');
  t.is((await post(encodeNpy(new Float32Array(8), [2, 4]), 'application/x-npy')).status, 200);
  // The body cap: exactly maxBody bytes get past it (and are refused for their elements), one more is E_BODY_TOO_LARGE.
  const atCap = json(3) + ' '.repeat(maxBody - Buffer.byteLength(json(3)));
  t.is(Buffer.byteLength(atCap), maxBody);
  t.is(errorCode(await post(atCap)), 'E_TENSOR_TOO_LARGE');
  t.is(errorCode(await post(atCap + ' ')), 'E_BODY_TOO_LARGE');
});

test('deploy.maxBytes: an artifact of exactly the cap is deployed, one byte over is refused before downloading', async (t) => {
  const dir = tempDir(t, 'edgeq-limits-deploy-');
  const stateDir = join(dir, 'state');
  const store = Store.open(storeFile(stateDir));
  t.teardown(() => store.close());
  const server = await startServer(t);
  const body = modelVariant('cap');
  server.route('/m.onnx', { body, modes: ['ok'] });
  const over = await t.throwsAsync(deployManifest(store, stateDir, manifestFor('m', '1', server.url('/m.onnx'), body), { config: { maxBytes: body.length - 1, minFreeBytes: 0 } }));
  t.is((over as { code?: string }).code, 'E_ARTIFACT_TOO_LARGE');
  t.is(server.requests.length, 0, 'refused before any request');
  const r = await deployManifest(store, stateDir, manifestFor('m', '1', server.url('/m.onnx'), body), { config: { maxBytes: body.length, minFreeBytes: 0 } });
  t.is(r.version, 1);
});

test('import.maxBytes: a file or download of exactly the cap is taken, one byte more is E_BODY_TOO_LARGE', async (t) => {
  const dir = tempDir(t, 'edgeq-limits-import-');
  const file = join(dir, 'x.npy');
  writeFileSync(file, Buffer.alloc(1000));
  t.notThrows(() => checkFileSize(file, 1000));
  t.throws(() => checkFileSize(file, 999), { message: /is 1000 bytes; imports are limited to 999 \(config import.maxBytes\)/ });
  const server = await startServer(t);
  server.route('/x.npy', { body: Buffer.alloc(1000, 7), modes: ['ok'] });
  const url = new URL(server.url('/x.npy'));
  t.is(await download(url, join(dir, 'ok.npy'), 1000, [url.origin + '/']), 1000);
  const e = await t.throwsAsync(download(url, join(dir, 'over.npy'), 999, [url.origin + '/']));
  t.is((e as { code?: string }).code, 'E_BODY_TOO_LARGE');
});

test('config: the limit keys are checked and reach the store', (t) => {
  const c = parseConfig({ store: { maxBytes: 2 * 1024 * 1024 }, outbox: { maxMessages: 10, maxBytes: 4096 }, runs: { keep: 5 }, serve: { maxElements: 100 }, capture: { maxQueue: 3, maxQueueBytes: 1000 } }, 'test');
  t.deepEqual(storeLimits(c), { maxBytes: 2 * 1024 * 1024, outboxMaxMessages: 10, outboxMaxBytes: 4096, keepRuns: 5 });
  t.is(c.serve.maxElements, 100);
  t.like(c.capture, { maxQueue: 3, maxQueueBytes: 1000 });
  for (const [bad, re] of [
    [{ store: { maxBytes: 1000 } }, /"store.maxBytes" must be a whole number of bytes, 1 MiB or more/],
    [{ outbox: { maxMessages: 0 } }, /"outbox.maxMessages"/],
    [{ outbox: { size: 1 } }, /unknown key "outbox.size"/],
    [{ runs: { keep: 1.5 } }, /"runs.keep"/],
    [{ serve: { maxElements: -1 } }, /"serve.maxElements"/],
    [{ capture: { maxQueue: 'x' } }, /"capture.maxQueue"/],
  ] as const) {
    t.throws(() => parseConfig(bad, 'test'), { message: re }, JSON.stringify(bad));
  }
});
