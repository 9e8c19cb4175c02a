/**
 * SIGKILL during a deploy, then a restart: exactly one consistent active version, and a repeated
 * deploy completes (resuming a killed download). The child pauses at a named point
 * (EDGEQ_TEST_PAUSE_AT) and says so on stdout; the test kills it there.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deployManifest } from '../../agent/deploy.js';
import { modelsDir, storeFile } from '../../agent/state.js';
import { Store } from '../../agent/store/index.js';
import { sha256File } from '../../quant/hash.js';
import { tempDir } from '../helpers/fixtures.js';
import { manifestFor, modelVariant, sha256, startServer, strayFiles } from '../deploy/helpers.js';

const DEPLOY_MODULE = new URL('../../agent/deploy.js', import.meta.url).href;
const STORE_MODULE = new URL('../../agent/store/index.js', import.meta.url).href;

const CHILD = `
const [deployModule, storeModule, dbPath, stateDir, manifest] = process.argv.slice(2);
const { deployManifest } = await import(deployModule);
const { Store } = await import(storeModule);
const store = Store.open(dbPath);
await deployManifest(store, stateDir, JSON.parse(manifest));
process.stdout.write('DONE\\n');
store.close();
`;

function runUntilPause(script: string, args: string[], point: string): Promise<string> {
  return new Promise((resolveP, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGEQ_TEST_PAUSE_AT: point } });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(`PAUSE ${point}\n`)) child.kill('SIGKILL');
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolveP(out);
      else reject(new Error(`child ended (code ${String(code)}) before pausing at ${point}: ${out} ${err}`));
    });
  });
}

for (const point of ['download', 'rename', 'renamed', 'activate', 'activated']) {
  test(`SIGKILL at "${point}", then restart: one consistent active version, and a repeated deploy completes`, async (t) => {
    const dir = tempDir(t, 'edgeq-deploy-crash-');
    const stateDir = join(dir, 'state');
    const db = storeFile(stateDir);
    const server = await startServer(t);
    const v1 = modelVariant('r1');
    const v2 = modelVariant('r2');
    server.route('/r1.onnx', { body: v1, modes: ['ok'] });
    server.route('/r2.onnx', { body: v2, modes: ['ok'] });
    let store = Store.open(db);
    await deployManifest(store, stateDir, manifestFor('m', '1', server.url('/r1.onnx'), v1));
    store.close();

    const script = join(dir, 'child.mjs');
    writeFileSync(script, CHILD);
    const m2 = manifestFor('m', '2', server.url('/r2.onnx'), v2);
    await runUntilPause(script, [DEPLOY_MODULE, STORE_MODULE, db, stateDir, JSON.stringify(m2)], point);
    t.log(`killed at ${point}; left in models/: ${readdirSync(modelsDir(stateDir)).join(', ')}`);

    store = Store.open(db);
    t.teardown(() => store.close());
    t.deepEqual(store.integrityCheck(), ['ok']);
    const active = store.activeVersion('m')!;
    t.is(active.version, point === 'activated' ? 2 : 1);
    t.is(await sha256File(active.path), point === 'activated' ? sha256(v2) : sha256(v1));
    t.is(store.listModels().filter((x) => x.active !== null).length, 1);

    const r = await deployManifest(store, stateDir, m2);
    t.is(r.version, 2);
    if (point === 'download') t.true(r.resumedFrom > 0, 'the killed download resumed');
    if (point === 'activated') t.is(r.outcome, 'already-active');
    t.is(store.activeVersion('m')?.version, 2);
    t.is(await sha256File(store.activeVersion('m')!.path), sha256(v2));
    t.deepEqual(strayFiles(modelsDir(stateDir)), []);
    for (const name of readdirSync(modelsDir(stateDir))) t.true(store.pathReferenced(join(modelsDir(stateDir), name)), `${name} is referenced`);
    t.deepEqual(store.integrityCheck(), ['ok']);
  });
}
