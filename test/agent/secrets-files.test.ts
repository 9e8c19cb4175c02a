/**
 * Secrets and the file system: a real daemon on the shared broker runs status, detect, config,
 * optimize and serves (with capture) a request. Its broker password never appears in its log or
 * in anything it publishes; everything it writes is under the state directory, private to its
 * user (the endpoint's socket is group-accessible by design); HOME, TMPDIR and the working
 * directory stay empty.
 */
import { spawn } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, tempDir } from '../helpers/fixtures.js';
import { body, device, prepare, replyTo, watch } from '../helpers/daemon.js';
import { serviceTest, sharedBrokerMissing, SHARED_BROKER_URL } from '../helpers/mosquitto.js';
import { request } from '../helpers/serve.js';

const missing = await sharedBrokerMissing();
const SECRET = 'pw-5b8f0c1e-never-print-me';

/** Every path under `dir` with its mode bits and kind. */
function walk(dir: string): Array<{ path: string; mode: number; kind: 'dir' | 'file' | 'socket' | 'other' }> {
  const out: Array<{ path: string; mode: number; kind: 'dir' | 'file' | 'socket' | 'other' }> = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    const kind = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSocket() ? 'socket' : 'other';
    out.push({ path: p, mode: st.mode & 0o777, kind });
    if (kind === 'dir') out.push(...walk(p));
  }
  return out;
}

serviceTest('the daemon never logs or publishes its broker password, writes only under its state directory, and keeps its files private', missing, async (t) => {
  const d = device();
  const o = await watch(t, SHARED_BROKER_URL, d);
  const p = await prepare(t, SHARED_BROKER_URL, d, { broker: { username: 'edgeq-device', password: SECRET } }, 200);
  const socket = join(p.stateDir, 'edgeq.sock');
  const { writeFileSync, readFileSync } = await import('node:fs');
  const cfg = JSON.parse(readFileSync(p.config, 'utf8')) as Record<string, unknown>;
  writeFileSync(p.config, JSON.stringify({ ...cfg, serve: { socket } }));
  // Empty directories the daemon must leave alone.
  const outside = tempDir(t, 'edgeq-outside-');
  const [home, tmp, cwd] = ['home', 'tmp', 'cwd'].map((n) => join(outside, n));
  for (const dir of [home, tmp, cwd]) mkdirSync(dir);
  const child = spawn(process.execPath, [CLI, 'run', '--config', p.config], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: home, TMPDIR: tmp, EDGEQ_CONFIG: undefined, EDGEQ_PASSWORD: undefined } });
  let log = '';
  child.stderr.on('data', (c: Buffer) => (log += c.toString()));
  child.stdout.on('data', (c: Buffer) => (log += c.toString()));
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  t.teardown(() => child.kill('SIGKILL'));

  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');
  const commands = [
    { id: 's-1', type: 'status' },
    { id: 'd-1', type: 'detect' },
    { id: 'c-1', type: 'config', args: { set: { 'quantize.method': 'minmax' } } },
    { id: 'p-1', type: 'capture', args: { model: 'fmnist', action: 'set', rate: 1 } },
    { id: 'o-1', type: 'optimize', args: { model: 'fmnist' } },
  ];
  for (const c of commands) {
    const from = o.messages.length;
    await o.publish(d.cmd, JSON.stringify(c));
    const states = c.type === 'optimize' ? ['succeeded', 'failed'] : ['succeeded', 'failed', 'rejected'];
    const r = body(await o.waitFor(replyTo(d, c.id, ...states), `the answer to ${c.id}`, from));
    t.not(r.state, 'rejected', JSON.stringify(r));
  }
  const x = { input: { shape: [1, 1, 28, 28], data: new Array<number>(784).fill(0.25) } };
  const served = await request({ socketPath: socket }, { method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ inputs: x }) });
  t.is(served.status, 200, served.body.toString());
  await new Promise((r) => setTimeout(r, 300)); // the capture writer's flush
  child.kill('SIGTERM');
  t.is(await exited, 0, log.slice(-2000));

  t.false(log.includes(SECRET), 'the password is not in the log');
  t.true(log.includes('"password":"(set)"'), 'the log says a password is set, not which');
  const published = o.messages.map((m) => m.text);
  t.true(published.length >= 8);
  t.false(published.some((s) => s.includes(SECRET)), 'nor in anything published');

  for (const dir of [home, tmp, cwd]) t.deepEqual(readdirSync(dir), [], `${dir} stays empty`);
  const entries = walk(p.stateDir);
  t.true(entries.some((e) => e.path.endsWith('.onnx')) && entries.some((e) => e.path.endsWith('edgeq.db')));
  for (const e of entries) {
    if (e.kind === 'socket') t.is(e.mode & 0o007, 0, `${e.path} is not open to others (${e.mode.toString(8)})`);
    else t.is(e.mode & 0o077, 0, `${e.path} (${e.kind}) is private to its owner, mode ${e.mode.toString(8)}`);
  }
});
