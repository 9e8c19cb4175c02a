import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, openSync, closeSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { MIGRATIONS, Store } from '../../agent/store/index.js';
import { EdgeqError, type ErrorCode } from '../../quant/errors.js';
import { tempDir } from '../helpers/fixtures.js';
import { addModel, one, SHA_A, tempStore } from '../helpers/store.js';

const STORE_MODULE = new URL('../../agent/store/index.js', import.meta.url).href;

function expectCode(t: ExecutionContext, fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  const e = t.throws(fn);
  t.true(e instanceof EdgeqError, String(e));
  t.is((e as EdgeqError).code, code, e?.message);
  if (message) t.regex(e!.message, message);
}

test('a new store runs every migration, is healthy, and is private to its owner', (t) => {
  const dir = tempDir(t, 'edgeq-store-');
  const path = join(dir, 'state', 'nested', 'edgeq.db');
  const store = Store.open(path);
  t.teardown(() => store.close());
  t.is(store.path, path);
  t.is(store.schemaVersion(), MIGRATIONS.length);
  t.deepEqual(store.integrityCheck(), ['ok']);
  t.deepEqual(store.listModels(), []);
  t.deepEqual(store.listRuns(), []);
  t.is(store.outboxSize(), 0);
  if (process.platform !== 'win32') {
    t.is(statSync(join(dir, 'state')).mode & 0o777, 0o700);
    t.is(statSync(path).mode & 0o777, 0o600);
  }
});

test('reopening keeps models, samples, runs, commands and the outbox', (t) => {
  const path = join(tempDir(t, 'edgeq-store-'), 'edgeq.db');
  let store = Store.open(path);
  addModel(store, 'cam');
  store.setPolicy('cam', { rate: 1, maxSamples: 7 });
  store.offerSamples('cam', [one(1), one(2)]);
  const run = store.createRun('quantize', { bits: 8 });
  store.startRun(run.id);
  store.finishRun(run.id, { sizeBytes: 123 });
  store.recordCommand('cmd-1', { state: 'succeeded' });
  store.enqueueOutbox({ topic: 'edgeq/v1/dev/report', payload: '{}', kind: 'report' });
  store.close();
  store.close(); // closing twice is harmless

  store = Store.open(path);
  t.teardown(() => store.close());
  t.is(store.schemaVersion(), MIGRATIONS.length);
  t.deepEqual(store.integrityCheck(), ['ok']);
  t.deepEqual(store.listModels().map((m) => [m.name, m.versions, m.active, m.samples]), [['cam', 1, 1, 2]]);
  t.is(store.getPolicy('cam').maxSamples, 7);
  t.is(store.getRun(run.id)?.state, 'succeeded');
  t.deepEqual(store.getRun(run.id)?.result, { sizeBytes: 123 });
  t.deepEqual(store.commandSeen('cmd-1'), { reply: { state: 'succeeded' } });
  t.is(store.outboxSize(), 1);
});

test('a file that is not a store, a directory, and a newer schema are refused with clear errors', (t) => {
  const dir = tempDir(t, 'edgeq-store-');
  const junk = join(dir, 'junk.db');
  writeFileSync(junk, 'this is not SQLite, just some text that is long enough to have a header '.repeat(10));
  expectCode(t, () => Store.open(junk), 'E_STORE_INVALID', /junk\.db is not an edgeq store/);
  mkdirSync(join(dir, 'adir'));
  expectCode(t, () => Store.open(join(dir, 'adir')), 'E_STORE_INVALID', /is a directory/);

  // A store written by a future edgeq: bump user_version (bytes 60..63 of the header, big-endian).
  const future = join(dir, 'future.db');
  Store.open(future).close();
  const fd = openSync(future, 'r+');
  const v = Buffer.alloc(4);
  v.writeUInt32BE(MIGRATIONS.length + 1, 0);
  writeSync(fd, v, 0, 4, 60);
  closeSync(fd);
  expectCode(t, () => Store.open(future), 'E_STORE_VERSION', /newer than this edgeq knows/);

  // Another application's SQLite file: its application_id (bytes 68..71) is not edgeq's.
  const other = join(dir, 'other.db');
  Store.open(other).close();
  const fd2 = openSync(other, 'r+');
  writeSync(fd2, Buffer.from([0, 0, 0, 1]), 0, 4, 68);
  closeSync(fd2);
  expectCode(t, () => Store.open(other), 'E_STORE_INVALID', /another application/);
});

test('models: versions count up, the active version is explicit, names are checked', (t) => {
  const store = tempStore(t);
  const inputs = [{ name: 'image', dtype: 'float32', shape: ['N', 3, 32, 32] }];
  const v1 = store.addModelVersion('resnet-18.v2_a', { kind: 'fp32', path: '/m/fp32.onnx', sha256: SHA_A, sizeBytes: 4000, inputs });
  t.like(v1, { model: 'resnet-18.v2_a', version: 1, kind: 'fp32', path: '/m/fp32.onnx', sizeBytes: 4000, parentVersion: null });
  t.deepEqual(v1.inputs, inputs);
  t.true(store.hasModel('resnet-18.v2_a'));
  t.false(store.hasModel('other'));
  t.is(store.activeVersion('resnet-18.v2_a'), undefined, 'adding a version does not activate it');

  const v2 = store.addModelVersion('resnet-18.v2_a', { kind: 'int8', path: '/m/int8.onnx', sha256: 'b'.repeat(64), sizeBytes: 1000, inputs, parentVersion: 1 });
  t.is(v2.version, 2);
  t.is(v2.parentVersion, 1);
  store.setActive('resnet-18.v2_a', 2);
  t.is(store.activeVersion('resnet-18.v2_a')?.kind, 'int8');
  store.setActive('resnet-18.v2_a', 1);
  t.is(store.activeVersion('resnet-18.v2_a')?.version, 1);
  t.deepEqual(store.listVersions('resnet-18.v2_a').map((v) => v.version), [1, 2]);
  t.deepEqual(store.getVersion('resnet-18.v2_a', 2), v2);
  t.is(store.getVersion('resnet-18.v2_a', 3), undefined);
  addModel(store, 'another');
  t.deepEqual(store.listModels().map((m) => [m.name, m.versions, m.active, m.samples]), [['another', 1, 1, 0], ['resnet-18.v2_a', 2, 1, 0]]);

  expectCode(t, () => store.setActive('resnet-18.v2_a', 9), 'E_MODEL_UNKNOWN', /no version 9/);
  expectCode(t, () => store.setActive('nope', 1), 'E_MODEL_UNKNOWN', /no model named "nope"/);
  expectCode(t, () => store.addModelVersion('resnet-18.v2_a', { kind: 'int8', path: '/x', sha256: SHA_A, sizeBytes: 1, inputs, parentVersion: 7 }), 'E_MODEL_UNKNOWN');
  for (const bad of ['', '-lead', '.hidden', 'has space', 'slash/name', 'x'.repeat(65), 'ünï']) {
    expectCode(t, () => store.addModelVersion(bad, { kind: 'fp32', path: '/x', sha256: SHA_A, sizeBytes: 1, inputs }), 'E_MODEL_NAME');
  }
  t.notThrows(() => store.addModelVersion('x'.repeat(64), { kind: 'fp32', path: '/x', sha256: SHA_A, sizeBytes: 1, inputs }));
  expectCode(t, () => store.addModelVersion('ok', { kind: 'fp16' as 'fp32', path: '/x', sha256: SHA_A, sizeBytes: 1, inputs }), 'E_ARGUMENT', /kind/);
  expectCode(t, () => store.addModelVersion('ok', { kind: 'fp32', path: '/x', sha256: 'XYZ', sizeBytes: 1, inputs }), 'E_ARGUMENT', /sha256/);
  expectCode(t, () => store.addModelVersion('ok', { kind: 'fp32', path: '/x', sha256: SHA_A, sizeBytes: -1, inputs }), 'E_ARGUMENT', /sizeBytes/);
  expectCode(t, () => store.addModelVersion('ok', { kind: 'fp32', path: '/x', sha256: SHA_A, sizeBytes: 1, inputs: [{ name: 'a', dtype: 'float32', shape: [1.5] }] }), 'E_ARGUMENT', /shape/);
  t.false(store.hasModel('ok'), 'a refused version creates no model');
});

test('runs: queued → running → succeeded, with progress, result and guarded transitions', (t) => {
  const store = tempStore(t);
  const run = store.createRun('quantize', { model: 'cam', method: 'histogram' });
  t.regex(run.id, /^[0-9a-f-]{36}$/);
  t.like(run, { kind: 'quantize', state: 'queued', progress: null, result: null, error: null, startedAt: null, finishedAt: null, ownerPid: process.pid });
  t.deepEqual(run.params, { model: 'cam', method: 'histogram' });
  expectCode(t, () => store.setProgress(run.id, 0.1), 'E_RUN_STATE', /is queued/);
  store.startRun(run.id);
  expectCode(t, () => store.startRun(run.id), 'E_RUN_STATE', /is running; cannot start/);
  store.setProgress(run.id, 0.25);
  t.like(store.getRun(run.id), { state: 'running', progress: 0.25 });
  t.not(store.getRun(run.id)?.startedAt, null);
  expectCode(t, () => store.setProgress(run.id, 1.5), 'E_ARGUMENT');
  expectCode(t, () => store.setProgress(run.id, Number.NaN), 'E_ARGUMENT');
  store.finishRun(run.id, { sizeBytes: { fp32: 10, int8: 3 } });
  const done = store.getRun(run.id)!;
  t.like(done, { state: 'succeeded', progress: 1, error: null });
  t.deepEqual(done.result, { sizeBytes: { fp32: 10, int8: 3 } });
  t.not(done.finishedAt, null);
  expectCode(t, () => store.failRun(run.id, { code: 'E_RUNTIME', message: 'late' }), 'E_RUN_STATE', /is succeeded; cannot fail/);
  expectCode(t, () => store.finishRun('no-such-run', {}), 'E_RUN_UNKNOWN');
  expectCode(t, () => store.createRun('quantize', { big: 1n }), 'E_ARGUMENT', /JSON/);
  expectCode(t, () => store.createRun('', {}), 'E_ARGUMENT');
});

test('runs: failed and cancelled keep the error; listRuns filters, limits and puts the newest first', (t) => {
  const store = tempStore(t);
  const a = store.createRun('eval', {});
  const b = store.createRun('bench', {});
  const c = store.createRun('eval', { n: 3 });
  store.startRun(a.id);
  store.failRun(a.id, { code: 'E_MODEL_INVALID', message: 'bad model' });
  store.failRun(b.id, { code: 'E_CANCELLED', message: 'operator cancelled' }, 'cancelled');
  t.like(store.getRun(a.id), { state: 'failed', error: { code: 'E_MODEL_INVALID', message: 'bad model' } });
  t.like(store.getRun(b.id), { state: 'cancelled', error: { code: 'E_CANCELLED', message: 'operator cancelled' } });
  t.deepEqual(store.listRuns().map((r) => r.id), [c.id, b.id, a.id]);
  t.deepEqual(store.listRuns({ kind: 'eval' }).map((r) => r.id), [c.id, a.id]);
  t.deepEqual(store.listRuns({ limit: 1 }).map((r) => r.id), [c.id]);
  t.deepEqual(store.listRuns({ state: 'queued' }).map((r) => r.id), [c.id]);
});

test('recoverInterruptedRuns: runs of a process that exited become interrupted; this process\'s runs are left alone', (t) => {
  const path = join(tempDir(t, 'edgeq-store-'), 'edgeq.db');
  const store = Store.open(path);
  t.teardown(() => store.close());
  const mine = store.createRun('quantize', {});
  store.startRun(mine.id);
  // Another process creates one queued and one running run, then exits without finishing them.
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', `
    const { Store } = await import(${JSON.stringify(STORE_MODULE)});
    const s = Store.open(${JSON.stringify(path)});
    const q = s.createRun('eval', {});
    const r = s.createRun('calibrate', {});
    s.startRun(r.id);
    s.setProgress(r.id, 0.4);
    console.log(JSON.stringify([q.id, r.id]));
    s.close();
  `], { encoding: 'utf8' });
  t.is(child.status, 0, child.stderr);
  const [queued, running] = JSON.parse(child.stdout) as string[];
  t.is(store.getRun(running)?.state, 'running');
  t.is(store.recoverInterruptedRuns(), 2);
  for (const id of [queued, running]) {
    const r = store.getRun(id)!;
    t.is(r.state, 'interrupted');
    t.is(r.error?.code, 'E_INTERRUPTED');
    t.regex(r.error!.message, new RegExp(`pid ${child.pid}`));
    t.not(r.finishedAt, null);
  }
  t.is(store.getRun(running)?.progress, 0.4);
  t.is(store.getRun(mine.id)?.state, 'running');
  t.is(store.recoverInterruptedRuns(), 0);
  expectCode(t, () => store.finishRun(running, {}), 'E_RUN_STATE', /is interrupted/);
});

test('processed commands: a repeated id gets the stored reply; old ones can be forgotten', (t) => {
  const store = tempStore(t);
  t.is(store.commandSeen('c1'), undefined);
  store.recordCommand('c1', { state: 'accepted' });
  t.deepEqual(store.commandSeen('c1'), { reply: { state: 'accepted' } });
  store.recordCommand('c1', { state: 'succeeded', result: { ok: true } });
  t.deepEqual(store.commandSeen('c1'), { reply: { state: 'succeeded', result: { ok: true } } });
  store.recordCommand('c2', null);
  t.deepEqual(store.commandSeen('c2'), { reply: null });
  t.is(store.pruneCommands(0), 0);
  t.is(store.pruneCommands(Date.now() + 1), 2);
  t.is(store.commandSeen('c1'), undefined);
  expectCode(t, () => store.recordCommand('', {}), 'E_ARGUMENT');
});

test('outbox: first in, first out; acks remove; attempts count; ids are never reused', (t) => {
  const store = tempStore(t);
  const a = store.enqueueOutbox({ topic: 't/report', payload: '{"a":1}', kind: 'report' });
  const b = store.enqueueOutbox({ topic: 't/reply', payload: '{"b":2}', kind: 'reply', qos: 1 });
  const c = store.enqueueOutbox({ topic: 't/tele', payload: 'x', kind: 'telemetry', qos: 0 });
  t.true(a < b && b < c);
  t.is(store.outboxSize(), 3);
  t.deepEqual(store.peekOutbox(2), [
    { id: a, topic: 't/report', payload: '{"a":1}', kind: 'report', qos: 1, attempts: 0 },
    { id: b, topic: 't/reply', payload: '{"b":2}', kind: 'reply', qos: 1, attempts: 0 },
  ]);
  store.noteOutboxAttempt(a);
  store.noteOutboxAttempt(a);
  t.is(store.peekOutbox(1)[0].attempts, 2);
  store.ackOutbox(a);
  store.ackOutbox(a); // acking twice is harmless
  t.deepEqual(store.peekOutbox(10).map((m) => m.id), [b, c]);
  store.ackOutbox(b);
  store.ackOutbox(c);
  t.is(store.outboxSize(), 0);
  t.true(store.enqueueOutbox({ topic: 't', payload: '', kind: 'telemetry' }) > c);
  expectCode(t, () => store.enqueueOutbox({ topic: 't', payload: '', kind: 'email' as 'report' }), 'E_ARGUMENT');
  expectCode(t, () => store.enqueueOutbox({ topic: '', payload: '', kind: 'report' }), 'E_ARGUMENT');
  expectCode(t, () => store.enqueueOutbox({ topic: 't', payload: '', kind: 'report', qos: 2 as 1 }), 'E_ARGUMENT');
});
