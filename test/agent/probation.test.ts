/**
 * Probation of new activations (agent/probation.ts): a version activated over another is pending
 * until the endpoint has served it K times in a row without error; runtime failures or restarts
 * while pending roll it back. Real store, real ONNX Runtime sessions, real `edgeq serve` processes.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { activateVersion, deployManifest, pruneModel, rollbackModel } from '../../agent/deploy.js';
import { startEndpoint } from '../../agent/endpoint.js';
import { registerModel } from '../../agent/models.js';
import { storeFile } from '../../agent/state.js';
import { Store } from '../../agent/store/index.js';
import { writeModel } from '../../quant/onnx/model.js';
import { CLI, tempDir } from '../helpers/fixtures.js';
import { buildModel, floatInput, makeNode } from '../helpers/models.js';
import { errorCode, fixedReshapeModel, request, type Reply } from '../helpers/serve.js';
import { manifestFor, modelVariant, startServer } from '../deploy/helpers.js';

/** x [N, 4] → relu(x): serves any batch. */
function reluModel(path: string): void {
  writeModel(buildModel([makeNode('Relu', ['x'], ['y'], 'relu')], [floatInput('x', ['N', 4])], [floatInput('y', ['N', 4])], []), path);
}

interface Setup {
  dir: string;
  stateDir: string;
  store: Store;
}

/** A store with model "m": v1 relu (active), v2 a Reshape to a fixed [2, 2] (fails for batches other than 1). */
async function twoVersions(t: ExecutionContext, second: 'reshape' | 'relu' = 'reshape'): Promise<Setup> {
  const dir = tempDir(t, 'edgeq-probation-');
  const stateDir = join(dir, 'state');
  const store = Store.open(storeFile(stateDir));
  t.teardown(() => store.close());
  reluModel(join(dir, 'v1.onnx'));
  if (second === 'reshape') fixedReshapeModel(join(dir, 'v2.onnx'));
  else writeModel(buildModel([makeNode('Relu', ['x'], ['r'], 'relu'), makeNode('Neg', ['r'], ['y'], 'neg')], [floatInput('x', ['N', 4])], [floatInput('y', ['N', 4])], []), join(dir, 'v2.onnx'));
  await registerModel(store, stateDir, 'm', join(dir, 'v1.onnx'));
  await registerModel(store, stateDir, 'm', join(dir, 'v2.onnx'));
  return { dir, stateDir, store };
}

const infer = (socketPath: string, batch: number): Promise<Reply> =>
  request({ socketPath }, { method: 'POST', path: '/v1/models/m/infer', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ inputs: { x: { shape: [batch, 4], data: new Array<number>(4 * batch).fill(1) } } }) });

test('store: an activation over a serving version is pending with that version as fallback; the first version and rollbacks are not', async (t) => {
  const { store } = await twoVersions(t);
  t.is(store.activeVersion('m')!.version, 1);
  t.is(store.pendingActivation('m'), undefined, 'the first version has nothing to fall back to');
  await activateVersion(store, 'm', 2);
  t.like(store.pendingActivation('m'), { version: 2, fallbackVersion: 1, servedOk: 0, failures: 0, starts: 0 });
  // Counting: only the pending version counts, and a failure restarts the run of successes.
  t.is(store.recordServed('m', 1, true), undefined);
  t.like(store.recordServed('m', 2, true), { servedOk: 1 });
  t.like(store.recordServed('m', 2, false, 'boom'), { servedOk: 0, failures: 1, lastError: 'boom' });
  await rollbackModel(store, 'm');
  t.is(store.activeVersion('m')!.version, 1);
  t.is(store.pendingActivation('m'), undefined, 'a rollback goes back to a version that served: no probation');
});

test('store: activating another version while one is pending keeps the last confirmed fallback, and pruning keeps it', async (t) => {
  const { dir, stateDir, store } = await twoVersions(t, 'relu');
  await activateVersion(store, 'm', 2);
  writeModel(buildModel([makeNode('Abs', ['x'], ['y'], 'abs')], [floatInput('x', ['N', 4])], [floatInput('y', ['N', 4])], []), join(dir, 'v3.onnx'));
  await registerModel(store, stateDir, 'm', join(dir, 'v3.onnx'));
  await activateVersion(store, 'm', 3);
  t.like(store.pendingActivation('m'), { version: 3, fallbackVersion: 1 });
  const pruned = pruneModel(store, stateDir, 'm', 1);
  t.deepEqual(pruned.map((p) => p.version), [2], 'v1 stays: it is the fallback of the pending v3');
  t.truthy(store.getVersion('m', 1));
});

test('endpoint: K inferences in a row without error confirm a pending version; a failure restarts the count', async (t) => {
  const { dir, store } = await twoVersions(t);
  await activateVersion(store, 'm', 2);
  const events: string[] = [];
  const ep = await startEndpoint(store, { socket: join(dir, 's.sock'), capture: false, threads: 1, log: () => {}, probation: { confirmAfter: 3, maxFailures: 5 }, onProbation: (e) => events.push(e.event) });
  t.teardown(() => ep.close());
  const sock = ep.server.socket!;
  t.is((await infer(sock, 1)).status, 200);
  t.is((await infer(sock, 1)).status, 200);
  const bad = await infer(sock, 2);
  t.is(bad.status, 500);
  t.is(errorCode(bad), 'E_RUNTIME');
  t.like(store.pendingActivation('m'), { version: 2, servedOk: 0, failures: 1 });
  for (let i = 0; i < 2; i++) t.is((await infer(sock, 1)).status, 200);
  t.like(store.pendingActivation('m'), { servedOk: 2 });
  t.is((await infer(sock, 1)).status, 200);
  await ep.probation.settled();
  t.is(store.pendingActivation('m'), undefined, 'confirmed after 3 in a row');
  t.is(store.activeVersion('m')!.version, 2);
  t.deepEqual(events, ['confirmed']);
});

test('endpoint: repeated runtime failures of a pending version roll it back at once; the next request is served by the fallback', async (t) => {
  const { dir, store } = await twoVersions(t);
  await activateVersion(store, 'm', 2);
  const logs: Array<Record<string, unknown>> = [];
  const ep = await startEndpoint(store, { socket: join(dir, 's.sock'), capture: false, threads: 1, log: (e) => logs.push(e), probation: { confirmAfter: 100, maxFailures: 2 } });
  t.teardown(() => ep.close());
  const sock = ep.server.socket!;
  for (let i = 0; i < 2; i++) t.is((await infer(sock, 2)).status, 500);
  await ep.probation.settled();
  t.is(store.activeVersion('m')!.version, 1);
  t.is(store.pendingActivation('m'), undefined);
  t.is(store.getVersion('m', 2)!.state, 'failed');
  const rolled = logs.find((e) => e.event === 'probation-rolled-back');
  t.like(rolled, { level: 'warn', model: 'm', version: 2, to: 1 });
  t.regex(String(rolled?.reason), /2 runtime failure\(s\).*E_RUNTIME|2 runtime failure\(s\).*ONNX Runtime failed/);
  // Like any switch, the fallback serves once its session is loaded and warm; until then the
  // version in memory answers (so a request or two may still fail).
  let after = await infer(sock, 2);
  for (let i = 0; i < 50 && after.headers['x-edgeq-model-version'] !== '1'; i++) {
    await new Promise((r) => setTimeout(r, 10));
    after = await infer(sock, 2);
  }
  t.is(after.status, 200, after.body.toString());
  t.is(after.headers['x-edgeq-model-version'], '1');
  t.is((await infer(sock, 2)).headers['x-edgeq-model-version'], '1');
});

test('endpoint: a pending version whose file cannot be loaded counts as failing and is rolled back', async (t) => {
  const { dir, store } = await twoVersions(t, 'relu');
  await activateVersion(store, 'm', 2);
  writeFileSync(store.getVersion('m', 2)!.path, 'damaged on disk after activation');
  const ep = await startEndpoint(store, { socket: join(dir, 's.sock'), capture: false, threads: 1, log: () => {}, probation: { maxFailures: 2 } });
  t.teardown(() => ep.close());
  for (let i = 0; i < 2; i++) t.is(errorCode(await infer(ep.server.socket!, 1)), 'E_MODEL_INVALID');
  await ep.probation.settled();
  t.is(store.activeVersion('m')!.version, 1);
  t.is((await infer(ep.server.socket!, 1)).status, 200);
});

/** Starts `edgeq serve` on the state directory; resolves with the process once it serves, and its stderr so far. */
function serve(t: ExecutionContext, stateDir: string, config: string): Promise<{ kill(): Promise<void>; stderr: () => string; socket: string }> {
  const socket = join(stateDir, 'edgeq.sock');
  const child = spawn(process.execPath, [CLI, 'serve', '--state-dir', stateDir, '--config', config, '--no-capture', '--threads', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  t.teardown(() => child.kill('SIGKILL'));
  return new Promise((ok, fail) => {
    const timer = setInterval(() => {
      if (out.includes('serving on')) {
        clearInterval(timer);
        ok({ kill: async () => { child.kill('SIGKILL'); await exited; }, stderr: () => err, socket });
      } else if (child.exitCode !== null) {
        clearInterval(timer);
        fail(new Error(`edgeq serve exited ${child.exitCode}: ${err}`));
      }
    }, 20);
  });
}

test('restarts: a version that stays pending across repeated SIGKILLed serve processes is rolled back at the next start', async (t) => {
  const { dir, stateDir, store } = await twoVersions(t, 'relu');
  await activateVersion(store, 'm', 2);
  store.close();
  const config = join(dir, 'agent.json');
  writeFileSync(config, JSON.stringify({ deploy: { confirmAfter: 50, maxPendingStarts: 2 } }));
  for (let start = 1; start <= 2; start++) {
    const p = await serve(t, stateDir, config);
    const r = await infer(p.socket, 1);
    t.is(r.headers['x-edgeq-model-version'], '2', `start ${start} serves the pending v2`);
    await p.kill(); // a crash before K inferences: the kind of restart loop a bad model causes
  }
  const p = await serve(t, stateDir, config);
  const r = await infer(p.socket, 1);
  t.is(r.status, 200);
  t.is(r.headers['x-edgeq-model-version'], '1', 'the third start rolled back to v1 before serving');
  t.regex(p.stderr(), /"event":"probation-rolled-back".*"to":1/);
  await p.kill();
  const after = Store.open(storeFile(stateDir));
  t.teardown(() => after.close());
  t.is(after.activeVersion('m')!.version, 1);
  t.is(after.getVersion('m', 2)!.state, 'failed');
  t.is(after.pendingActivation('m'), undefined);
});

test('deploy: the endpoint keeps answering while a new release is deployed, then serves it (pending) and confirms it', async (t) => {
  const dir = tempDir(t, 'edgeq-probation-deploy-');
  const stateDir = join(dir, 'state');
  const store = Store.open(storeFile(stateDir));
  t.teardown(() => store.close());
  const server = await startServer(t);
  const bodies = [modelVariant('p1'), modelVariant('p2')];
  bodies.forEach((b, i) => server.route(`/r${i + 1}.onnx`, { body: b, modes: ['ok'] }));
  await deployManifest(store, stateDir, manifestFor('m', '1', server.url('/r1.onnx'), bodies[0]));
  const ep = await startEndpoint(store, { socket: join(dir, 's.sock'), capture: false, threads: 1, log: () => {}, probation: { confirmAfter: 5 } });
  t.teardown(() => ep.close());
  const x = { input: { shape: [1, 1, 28, 28], data: new Array<number>(784).fill(0.5) } };
  const call = () => request({ socketPath: ep.server.socket! }, { method: 'POST', path: '/v1/models/m/infer', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ inputs: x }) });
  const seen: string[] = [];
  let stop = false;
  const load = (async () => {
    while (!stop) {
      const r = await call();
      seen.push(r.status === 200 ? String(r.headers['x-edgeq-model-version']) : `error ${r.status} ${r.body.toString()}`);
    }
  })();
  while (seen.length < 3) await new Promise((r) => setTimeout(r, 5));
  const d = await deployManifest(store, stateDir, manifestFor('m', '2', server.url('/r2.onnx'), bodies[1]));
  t.is(d.version, 2);
  t.like(store.pendingActivation('m'), { version: 2, fallbackVersion: 1 });
  while (!seen.includes('2') || store.pendingActivation('m')) await new Promise((r) => setTimeout(r, 5));
  stop = true;
  await load;
  t.deepEqual(seen.filter((s) => s !== '1' && s !== '2'), [], 'no request failed across the switch');
  const first2 = seen.indexOf('2');
  t.true(seen.slice(first2).every((s) => s === '2'), 'once v2 serves, v1 never does again');
  t.is(store.activeVersion('m')!.version, 2);
  t.log(`${seen.length} requests across the deploy: ${first2} by v1, ${seen.length - first2} by v2`);
});

test('deploy: a release whose inputs differ from the active version is refused and the active version stays', async (t) => {
  const dir = tempDir(t, 'edgeq-probation-inputs-');
  const stateDir = join(dir, 'state');
  const store = Store.open(storeFile(stateDir));
  t.teardown(() => store.close());
  const server = await startServer(t);
  const v1 = modelVariant('i1');
  server.route('/r1.onnx', { body: v1, modes: ['ok'] });
  await deployManifest(store, stateDir, manifestFor('m', '1', server.url('/r1.onnx'), v1));
  reluModel(join(dir, 'other.onnx'));
  const other = readFileSync(join(dir, 'other.onnx'));
  server.route('/r2.onnx', { body: other, modes: ['ok'] });
  const e = await t.throwsAsync(deployManifest(store, stateDir, manifestFor('m', '2', server.url('/r2.onnx'), other)));
  t.is((e as { code?: string }).code, 'E_INPUTS_CHANGED');
  t.regex(e!.message, /input input is gone; new input x \[N, 4\] float32/);
  t.is(store.activeVersion('m')!.version, 1);
  t.is(store.listVersions('m').length, 1);
});
