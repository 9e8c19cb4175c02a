import test from 'ava';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, tempDir } from '../helpers/fixtures.js';
import { manifestFor, modelVariant, startServer, strayFiles } from '../deploy/helpers.js';
import { makePki } from '../helpers/mosquitto.js';

interface Ran {
  status: number;
  json: Record<string, unknown>;
  stdout: string;
  stderr: string;
}

/** Runs the CLI asynchronously (the test's http server must keep answering meanwhile). */
function run(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Ran> {
  return new Promise((ok) => {
    execFile(process.execPath, [CLI, ...args], { encoding: 'utf8', env }, (err, stdout, stderr) => {
      let json: Record<string, unknown> = {};
      try {
        json = JSON.parse(stdout) as Record<string, unknown>;
      } catch {
        // text output
      }
      ok({ status: err ? (typeof err.code === 'number' ? err.code : 1) : 0, json, stdout, stderr });
    });
  });
}

test('edgeq deploy, models ls, activate and rollback', async (t) => {
  const dir = tempDir(t, 'edgeq-deploy-cli-');
  const state = ['--state-dir', join(dir, 'state')];
  const server = await startServer(t);
  const files: string[] = [];
  for (const tag of ['1.0.0', '1.1.0']) {
    const body = modelVariant(tag);
    server.route(`/${tag}.onnx`, { body, modes: ['ok'] });
    const f = join(dir, `${tag}.json`);
    writeFileSync(f, JSON.stringify(manifestFor('m', tag, server.url(`/${tag}.onnx`), body)));
    files.push(f);
  }
  let r = await run(['deploy', '--manifest', files[0], ...state, '--json']);
  t.is(r.status, 0, r.stderr + r.stdout);
  t.like(r.json, { ok: true, model: 'm', version: 1, release: '1.0.0', outcome: 'downloaded' });
  r = await run(['deploy', '--manifest', files[1], ...state]);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /activated m v2 \(was v1\); pending until it has served/);
  r = await run(['models', 'rollback', 'm', ...state, '--json']);
  t.like(r.json, { ok: true, version: 1, previous: 2 });
  r = await run(['models', 'rollback', 'm', ...state, '--json']);
  t.is(r.status, 1);
  t.like(r.json, { ok: false, error: { code: 'E_NO_PREVIOUS' } });
  r = await run(['models', 'activate', 'm@1.1.0', ...state, '--json']);
  t.like(r.json, { ok: true, version: 2, release: '1.1.0', previous: 1, pending: true });
  r = await run(['models', 'ls', ...state]);
  t.regex(r.stdout, /v2\s+1\.1\.0\s+fp32\s+\S+ \S+\s+pending \(0 served, 0 failed\)/);
  // A bad manifest is E_MANIFEST_INVALID.
  writeFileSync(join(dir, 'bad.json'), JSON.stringify({ name: 'm', version: '3', url: 'ftp://x/y', sha256: 'x', size: 1 }));
  r = await run(['deploy', '--manifest', join(dir, 'bad.json'), ...state, '--json']);
  t.like(r.json, { ok: false, error: { code: 'E_MANIFEST_INVALID' } });
  t.is((await run(['deploy', '--help'])).status, 0);
});

test('edgeq deploy over https: a server the system trusts (NODE_EXTRA_CA_CERTS) works; an untrusted certificate is refused before anything is stored', async (t) => {
  const dir = tempDir(t, 'edgeq-deploy-https-');
  const pki = makePki(dir);
  const server = await startServer(t, { cert: pki.serverCert, key: pki.serverKey });
  const body = modelVariant('https');
  server.route('/m.onnx', { body, modes: ['ok'] });
  const manifest = join(dir, 'm.json');
  writeFileSync(manifest, JSON.stringify(manifestFor('m', '1', server.url('/m.onnx'), body)));
  const state = ['--state-dir', join(dir, 'state')];
  const { NODE_EXTRA_CA_CERTS: _ignored, ...env } = process.env;
  const untrusted = await run(['deploy', '--manifest', manifest, ...state, '--json'], env);
  t.is(untrusted.status, 1);
  t.like(untrusted.json, { ok: false, error: { code: 'E_DOWNLOAD' } });
  t.regex(JSON.stringify(untrusted.json), /certificate/i);
  t.deepEqual(strayFiles(join(dir, 'state', 'models')), []);
  const trusted = await run(['deploy', '--manifest', manifest, ...state, '--json'], { ...env, NODE_EXTRA_CA_CERTS: pki.ca });
  t.is(trusted.status, 0, trusted.stderr + trusted.stdout);
  t.like(trusted.json, { ok: true, model: 'm', version: 1, outcome: 'downloaded', transferred: body.length });
});
