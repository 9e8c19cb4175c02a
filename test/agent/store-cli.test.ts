/**
 * The store from the command line and over HTTP, end to end: models add, capture import/export,
 * optimize --model-name (a run recorded, the int8 model registered), eval --from-store, the
 * endpoint capturing into a real store and refusing bad input without storing it, and
 * `edgeq serve` started and stopped as a process.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseReport } from '../../agent/protocol/report.js';
import { startEndpoint } from '../../agent/endpoint.js';
import { registerModel } from '../../agent/models.js';
import { Store } from '../../agent/store/index.js';
import { storeFile } from '../../agent/state.js';
import { NpyFile, readNpy, writeNpy } from '../../quant/npy.js';
import { CLI, FMNIST, tempDir } from '../helpers/fixtures.js';
import { errorCode, request } from '../helpers/serve.js';

function edgeq(stateDir: string, ...args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args, '--state-dir', stateDir], { encoding: 'utf8' });
}

function json<T>(r: { status: number | null; stdout: string; stderr: string }): T {
  if (r.status !== 0) throw new Error(`exit ${r.status}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as T;
}

test('models add, capture import/stats/export, and refusals that store nothing', (t) => {
  const dir = tempDir(t);
  const v = json<{ version: number; kind: string }>(edgeq(dir, 'models', 'add', '--name', 'fmnist', '--file', FMNIST.model, '--json'));
  t.is(v.version, 1);
  t.is(v.kind, 'fp32');
  // 300 labelled samples
  const x = readNpy(FMNIST.test);
  const y = readNpy(FMNIST.labels);
  writeNpy(join(dir, 'x.npy'), (x.data as Float32Array).slice(0, 300 * 784), [300, 1, 28, 28]);
  writeNpy(join(dir, 'y.npy'), (y.data as BigInt64Array).slice(0, 300), [300]);
  const imp = json<{ outcomes: { kept: number } }>(edgeq(dir, 'capture', 'import', '--model', 'fmnist', '--file', join(dir, 'x.npy'), '--labels', join(dir, 'y.npy'), '--json'));
  t.is(imp.outcomes.kept, 300);
  // Importing the same samples again keeps nothing new.
  const again = json<{ outcomes: { duplicate: number } }>(edgeq(dir, 'capture', 'import', '--model', 'fmnist', '--file', join(dir, 'x.npy'), '--json'));
  t.is(again.outcomes.duplicate, 300);
  const [stats] = json<Array<{ kept: number; calibration: number; holdout: number }>>(edgeq(dir, 'capture', 'stats', '--model', 'fmnist', '--json'));
  t.is(stats.kept, 300);
  t.is(stats.calibration + stats.holdout, 300);
  t.true(stats.holdout > 30 && stats.holdout < 90, `holdout ${stats.holdout}`);

  const out = join(dir, 'export');
  const ex = json<{ count: number; files: Record<string, string>; labels: string }>(edgeq(dir, 'capture', 'export', '--model', 'fmnist', '--out', out, '--split', 'holdout', '--json'));
  t.is(ex.count, stats.holdout);
  const f = NpyFile.open(ex.files.input);
  t.deepEqual(f.shape, [stats.holdout, 1, 28, 28]);
  f.close();
  t.is(readNpy(ex.labels).shape[0], stats.holdout);

  // Wrong shape: refused whole, nothing stored, the refusal counted.
  writeNpy(join(dir, 'bad.npy'), new Float32Array(5 * 27 * 28), [5, 1, 27, 28]);
  const bad = edgeq(dir, 'capture', 'import', '--model', 'fmnist', '--file', join(dir, 'bad.npy'), '--json');
  t.is(bad.status, 1);
  t.is((JSON.parse(bad.stdout) as { error: { code: string } }).error.code, 'E_SHAPE_MISMATCH');
  const [after] = json<Array<{ kept: number; refused: number }>>(edgeq(dir, 'capture', 'stats', '--model', 'fmnist', '--json'));
  t.is(after.kept, 300);
  t.true(after.refused >= 1);
  // Names that could escape the store's directory are refused.
  for (const name of ['../x', 'a/b', '.hidden', '']) {
    const r = edgeq(dir, 'models', 'add', '--name', name, '--file', FMNIST.model, '--json');
    t.not(r.status, 0, name);
  }
  t.is(json<unknown[]>(edgeq(dir, 'models', 'ls', '--json')).length, 1);
  // Policy: bad values refused, good ones kept.
  t.is(edgeq(dir, 'capture', 'policy', '--model', 'fmnist', '--rate', '1.5').status, 1);
  const p = json<{ rate: number; maxBytes: number }>(edgeq(dir, 'capture', 'policy', '--model', 'fmnist', '--rate', '0.5', '--max-bytes', '1M', '--json'));
  t.is(p.rate, 0.5);
  t.is(p.maxBytes, 1024 * 1024);
});

test('optimize --model-name records the run, registers int8 and applies the gate; eval --from-store uses the held-out split', (t) => {
  const dir = tempDir(t);
  json(edgeq(dir, 'models', 'add', '--name', 'fmnist', '--file', FMNIST.model, '--json'));
  json(edgeq(dir, 'capture', 'import', '--model', 'fmnist', '--file', FMNIST.test, '--labels', FMNIST.labels, '--json'));
  const report = json<Record<string, unknown>>(edgeq(dir, 'optimize', '--model-name', 'fmnist', '--runs', '5', '--warmup', '1', '--json'));
  const parsed = parseReport(report);
  t.true(parsed.ok, parsed.ok ? '' : parsed.error);
  const store = Store.open(storeFile(dir));
  try {
    const holdout = store.countSamples('fmnist', 'holdout');
    t.is((report.accuracy as { samples: number; source: string }).samples, holdout);
    t.is((report.accuracy as { source: string }).source, 'eval-data');
    const [run] = store.listRuns({ kind: 'optimize' });
    t.is(run.state, 'succeeded');
    t.is(run.progress, 1);
    t.deepEqual(run.result, report);
    const versions = store.listVersions('fmnist');
    t.deepEqual(versions.map((v) => [v.version, v.kind, v.parentVersion]), [[1, 'fp32', null], [2, 'int8', 1]]);
    // The gate's decision is in the report, and the store agrees with it.
    const promotion = report.promotion as { promoted: boolean; activeVersion: number };
    t.is(store.activeVersion('fmnist')!.version, promotion.activeVersion);
    t.is(promotion.activeVersion, promotion.promoted ? 2 : 1);
    t.true(existsSync(versions[1].path));
    const ev = json<{ samples: number; model: { top1: number } }>(edgeq(dir, 'eval', '--from-store', '--model-name', 'fmnist', '--json'));
    t.is(ev.samples, holdout);
    t.true(ev.model.top1 > 0.85);
  } finally {
    store.close();
  }
  // No temporary exports left behind in the state directory.
  t.deepEqual(readdirSync(dir).sort(), ['edgeq.db', 'edgeq.db-shm', 'edgeq.db-wal', 'models'].filter((f) => existsSync(join(dir, f))).sort());
  // A failing run is recorded as failed.
  const noModel = edgeq(dir, 'optimize', '--model-name', 'nope', '--json');
  t.is(noModel.status, 1);
  t.is((JSON.parse(noModel.stdout) as { error: { code: string } }).error.code, 'E_MODEL_UNKNOWN');
});

test('the endpoint captures good requests into the store and stores nothing of bad ones', async (t) => {
  const dir = tempDir(t);
  const store = Store.open(storeFile(dir));
  t.teardown(() => store.close());
  await registerModel(store, dir, 'fmnist', FMNIST.model);
  store.setPolicy('fmnist', { rate: 1 });
  const ep = await startEndpoint(store, { socket: join(dir, 'edgeq.sock'), log: () => {} });
  t.teardown(() => ep.close());
  const target = { socketPath: ep.server.socket! };
  const x = readNpy(FMNIST.test).data as Float32Array;
  const body = (data: number[], shape = [1, 1, 28, 28]) => JSON.stringify({ inputs: { input: { shape, data } } });
  const good = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body: body(Array.from(x.subarray(0, 784))) });
  t.is(good.status, 200, good.body.toString());
  // The endpoint offers the sample once the reply has gone out; wait for it to reach the writer.
  for (let i = 0; i < 200 && store.captureStats('fmnist').kept === 0; i++) {
    await new Promise((r) => setTimeout(r, 10));
    await ep.writer!.flush();
  }
  t.is(store.captureStats('fmnist').kept, 1);
  const bad: Array<[string, string | Uint8Array, number, string]> = [
    ['/v1/models/fmnist/infer', '{"inputs": ', 400, 'E_BAD_JSON'],
    ['/v1/models/fmnist/infer', body(Array.from(x.subarray(0, 783)), [1, 1, 27, 29]), 400, 'E_SHAPE_MISMATCH'],
    ['/v1/models/fmnist/infer', JSON.stringify({ inputs: { input: { shape: [1, 1, 28, 28], dtype: 'int64', data: Array(784).fill(1) } } }), 400, 'E_DTYPE_MISMATCH'],
    ['/v1/models/fmnist/infer', 'x'.repeat(17 * 1024 * 1024), 413, 'E_BODY_TOO_LARGE'],
    ['/v1/models/other/infer', body(Array.from(x.subarray(0, 784))), 404, 'E_MODEL_UNKNOWN'],
    ['/v1/models/..%2F..%2Fetc/infer', body(Array.from(x.subarray(0, 784))), 400, 'E_MODEL_NAME'],
  ];
  for (const [path, b, status, code] of bad) {
    const r = await request(target, { method: 'POST', path, body: b });
    t.is(r.status, status, `${path}: ${r.body.toString().slice(0, 200)}`);
    t.is(errorCode(r), code);
  }
  await new Promise((r) => setTimeout(r, 50));
  await ep.writer!.flush();
  t.is(store.captureStats('fmnist').kept, 1);
  t.is(store.captureStats('fmnist').seen, 1);
  t.is(store.integrityCheck()[0], 'ok');
  t.is((await request(target, { path: '/v1/health' })).status, 200);
});

test('edgeq serve starts on the state directory\'s socket and stops cleanly on SIGTERM', async (t) => {
  const dir = tempDir(t);
  json(edgeq(dir, 'models', 'add', '--name', 'fmnist', '--file', FMNIST.model, '--json'));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ serve: { maxBodyBytes: 65536 } }));
  const p = spawn(process.execPath, [CLI, 'serve', '--state-dir', dir, '--config', join(dir, 'config.json')], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => p.on('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    p.stdout.on('data', (d: Buffer) => (d.toString().includes('serving on') ? resolve() : undefined));
    p.on('exit', (c) => reject(new Error(`serve exited with ${c}`)));
  });
  const target = { socketPath: join(dir, 'edgeq.sock') };
  const models = await request(target, { path: '/v1/models' });
  t.is(models.status, 200);
  t.regex(models.body.toString(), /fmnist/);
  // The config's body cap applies.
  const big = await request(target, { method: 'POST', path: '/v1/models/fmnist/infer', body: 'x'.repeat(70000) });
  t.is(big.status, 413);
  p.kill('SIGTERM');
  t.is(await exited, 0);
  t.false(existsSync(join(dir, 'edgeq.sock')));
});
