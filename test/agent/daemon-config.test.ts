/**
 * The daemon's pieces that need no broker: configuration from file, environment and flags;
 * the fleet's overrides; the device id default; reconnect delays; import source checks; the
 * persisted job queue in the store; the lock and the status sequence.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseConfig } from '../../agent/config.js';
import { defaultDeviceId, resolveDaemonConfig, saveOverrides, type RunFlags } from '../../agent/daemon/config.js';
import { checkSource } from '../../agent/daemon/import-source.js';
import { nextSeq, readSeq, takeLock } from '../../agent/daemon/state-files.js';
import { backoffDelay } from '../../agent/link/backoff.js';
import { EdgeqError } from '../../quant/errors.js';
import { CLI, tempDir } from '../helpers/fixtures.js';
import { tempStore } from '../helpers/store.js';

const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

function resolve(t: ExecutionContext, file: Record<string, unknown> | undefined, env: Record<string, string> = {}, flags: RunFlags = {}) {
  const dir = tempDir(t);
  let config: string | undefined;
  if (file) {
    config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ stateDir: join(dir, 'state'), ...file }));
  }
  return resolveDaemonConfig({ ...(config ? { config } : {}), ...flags }, { env: { ...env }, defaultConfigFile: join(dir, 'absent.json'), machineIdFile: join(dir, 'machine-id') });
}

function configError(t: ExecutionContext, fn: () => unknown, re: RegExp): void {
  const e = t.throws(fn);
  t.true(e instanceof EdgeqError, String(e));
  t.is((e as EdgeqError).code, 'E_CONFIG_INVALID');
  t.regex(e!.message, re);
}

test('flags override the environment, which overrides the file', (t) => {
  const file = { deviceId: 'from-file', prefix: 'file/v1', threads: 2, broker: { url: 'mqtt://file:1883', username: 'fu', password: 'fp' } };
  const a = resolve(t, file);
  t.like(a, { deviceId: 'from-file', prefix: 'file/v1', threads: 2 });
  t.like(a.broker, { url: 'mqtt://file:1883', username: 'fu', password: 'fp' });
  const b = resolve(t, file, { EDGEQ_DEVICE_ID: 'from-env', EDGEQ_BROKER: 'mqtt://env:1883', EDGEQ_PREFIX: 'env/v1', EDGEQ_THREADS: '3', EDGEQ_USERNAME: 'eu', EDGEQ_PASSWORD: 'ep' });
  t.like(b, { deviceId: 'from-env', prefix: 'env/v1', threads: 3, deviceIdSource: 'EDGEQ_DEVICE_ID' });
  t.like(b.broker, { url: 'mqtt://env:1883', username: 'eu', password: 'ep' });
  const c = resolve(t, file, { EDGEQ_DEVICE_ID: 'from-env', EDGEQ_BROKER: 'mqtt://env:1883' }, { deviceId: 'from-flag', broker: 'ws://flag:8080/mqtt', threads: 4 });
  t.like(c, { deviceId: 'from-flag', threads: 4 });
  t.is(c.broker.url, 'ws://flag:8080/mqtt');
  // Defaults
  t.like(a, { queueMax: 16, maxCommandBytes: 64 * 1024, shutdownTimeoutMs: 20_000 });
  t.deepEqual(a.broker.reconnect, { baseMs: 1000, capMs: 60_000 });
  t.like(a.broker, { sessionExpiry: 86_400, keepalive: 30 });
  t.deepEqual(a.import, { allow: [], maxBytes: 256 * 1024 * 1024 });
});

test('clear messages for bad settings', (t) => {
  configError(t, () => resolve(t, { deviceId: 'd1' }), /no broker: set broker\.url/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'http://broker:1883' } }), /"broker\.url" must be an mqtt:\/\//);
  configError(t, () => resolve(t, { deviceId: 'd1' }, { EDGEQ_BROKER: 'tcp://broker' }), /EDGEQ_BROKER: .*the scheme must be mqtt:\/\/, mqtts:\/\/, ws:\/\/ or wss:\/\/, not tcp:/);
  configError(t, () => resolve(t, { deviceId: 'd1' }, {}, { broker: 'mqtt://user:pw@broker' }), /not in the URL/);
  configError(t, () => resolve(t, { deviceId: 'dev/1', broker: { url: 'mqtt://b' } }), /"deviceId" must be/);
  configError(t, () => resolve(t, { broker: { url: 'mqtt://b' } }, {}, { deviceId: 'a+b' }), /--device-id: device id "a\+b" cannot be part of a topic name/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b' } }, {}, { prefix: 'edgeq/#' }), /--prefix: topic prefix/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b' } }, { EDGEQ_THREADS: 'many' }), /EDGEQ_THREADS must be a whole number/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b', ca: '/nonexistent/ca.pem' } }), /TLS files are set but the broker URL mqtt:\/\/b is not mqtts/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtts://b', ca: '/nonexistent/ca.pem' } }), /the broker CA file \/nonexistent\/ca\.pem cannot be read: no such file/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtts://b', cert: '/x.pem' } }), /mutual TLS needs both/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b', password: 'p' } }), /password is set without a user name/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b', reconnect: { baseMs: 5000, capMs: 100 } } }), /capMs \(100\) is below baseMs/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b', tls: true } }), /unknown key "broker\.tls"/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b' }, import: { allow: ['relative/dir'] } }), /"import\.allow": "relative\/dir" is neither/);
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtt://b' }, capture: { policies: { m: { rate: 2 } } } }), /"capture\.policies\.m\.rate" must be a share/);
  configError(t, () => resolveDaemonConfig({ config: '/nonexistent/edgeq.json' }, { env: {} }), /nonexistent\/edgeq\.json/);
  // A PEM file that is not PEM
  const dir = tempDir(t);
  writeFileSync(join(dir, 'ca.pem'), 'hello');
  configError(t, () => resolve(t, { deviceId: 'd1', broker: { url: 'mqtts://b', ca: join(dir, 'ca.pem') } }), /is not a PEM file/);
});

test('TLS files are read at start (mutual TLS)', (t) => {
  const dir = tempDir(t);
  for (const f of ['ca', 'cert', 'key']) writeFileSync(join(dir, `${f}.pem`), PEM);
  const c = resolve(t, { deviceId: 'd1', broker: { url: 'mqtts://b:8883', ca: join(dir, 'ca.pem') } }, { EDGEQ_TLS_CERT: join(dir, 'cert.pem'), EDGEQ_TLS_KEY: join(dir, 'key.pem') });
  t.is(c.broker.ca?.toString(), PEM);
  t.is(c.broker.cert?.toString(), PEM);
  t.is(c.broker.key?.toString(), PEM);
  t.deepEqual(c.broker.tlsFiles, { ca: join(dir, 'ca.pem'), cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') });
});

test('the device id defaults to one derived from /etc/machine-id, else the host name', (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, 'machine-id'), '0123456789abcdef0123456789abcdef\n');
  const a = defaultDeviceId(join(dir, 'machine-id'));
  t.regex(a.id, /^dev-[0-9a-f]{12}$/);
  t.false(a.id.includes('0123456789ab'), 'not the machine id itself');
  t.deepEqual(defaultDeviceId(join(dir, 'machine-id')), a);
  const h = defaultDeviceId(join(dir, 'none'));
  t.is(h.source, 'hostname');
  t.regex(h.id, /^[A-Za-z0-9][A-Za-z0-9._:-]*$/);
});

test('the fleet\'s overrides are applied over the file, and a broken overrides file is named', (t) => {
  const dir = tempDir(t);
  const stateDir = join(dir, 'state');
  mkdirSync(stateDir, { recursive: true });
  saveOverrides(stateDir, { 'quantize.method': 'entropy', threads: 2 });
  const c = resolveDaemonConfig({ broker: 'mqtt://b', deviceId: 'd1', stateDir }, { env: {}, defaultConfigFile: join(dir, 'none.json') });
  t.is(c.quantize.method, 'entropy');
  t.is(c.threads, 2);
  t.deepEqual(c.overrides, { 'quantize.method': 'entropy', threads: 2 });
  writeFileSync(join(stateDir, 'config-overrides.json'), '{"broker.url": "mqtt://evil"}');
  configError(t, () => resolveDaemonConfig({ broker: 'mqtt://b', deviceId: 'd1', stateDir }, { env: {}, defaultConfigFile: join(dir, 'none.json') }), /config-overrides\.json/);
});

test('parseConfig accepts the daemon sections', (t) => {
  const c = parseConfig({
    deviceId: 'cam-1',
    prefix: 'acme/edgeq/v1',
    threads: 2,
    broker: { url: 'mqtts://b:8883', username: 'u', password: 'p', keepalive: 20, reconnect: { baseMs: 500, capMs: 30000 } },
    capture: { enabled: false, policies: { cam: { rate: 0.2, retentionDays: 7 } } },
    import: { allow: ['/var/lib/edgeq/import', 'https://data.example.com/edgeq/'], maxBytes: 1000 },
    queue: { max: 4 },
    commands: { maxBytes: 1024 },
    shutdownTimeoutMs: 5000,
  }, 'cfg');
  t.is(c.broker?.reconnect?.capMs, 30000);
  t.is(c.capture?.policies?.cam.retentionDays, 7);
  t.is(c.queue?.max, 4);
});

test('reconnect delays: exponential ceiling, capped, full jitter', (t) => {
  const o = { baseMs: 1000, capMs: 60_000 };
  t.is(backoffDelay(0, o, () => 0.999999), 999);
  t.is(backoffDelay(3, o, () => 0.999999), 7999);
  t.is(backoffDelay(10, o, () => 0.999999), 59_999);
  t.is(backoffDelay(1000, o, () => 0.5), 30_000);
  t.is(backoffDelay(5, o, () => 0), 0);
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(4, o)));
  t.true(spread.size > 10, 'jittered');
});

test('import sources: only under an allowed directory or URL prefix', (t) => {
  const dir = tempDir(t);
  const allowed = join(dir, 'allowed');
  mkdirSync(join(allowed, 'sub'), { recursive: true });
  writeFileSync(join(allowed, 'sub', 'x.npy'), '');
  writeFileSync(join(dir, 'secret.npy'), '');
  symlinkSync(join(dir, 'secret.npy'), join(allowed, 'link.npy'));
  const allow = [allowed, 'https://data.example.com/edgeq'];
  t.like(checkSource(join(allowed, 'sub', 'x.npy'), allow), { kind: 'file' });
  const refused = (s: string) => t.is((t.throws(() => checkSource(s, allow)) as EdgeqError).code, 'E_IMPORT_NOT_ALLOWED', s);
  refused(join(dir, 'secret.npy'));
  refused(`${allowed}/../secret.npy`);
  refused(join(allowed, 'link.npy')); // a symbolic link out of the directory
  refused(`${allowed}-other/x.npy`);
  t.like(checkSource('https://data.example.com/edgeq/x.npy', allow), { kind: 'url' });
  refused('https://data.example.com/edgeqx/x.npy');
  refused('https://data.example.com.evil.org/edgeq/x.npy');
  refused('http://data.example.com/edgeq/x.npy');
  refused('https://user@data.example.com/edgeq/x.npy');
  t.is((t.throws(() => checkSource('relative.npy', allow)) as EdgeqError).code, 'E_ARGUMENT');
  t.regex(t.throws(() => checkSource('/x.npy', []))!.message, /allows no import sources/);
});

test('the job queue in the store: accept, start, requeue, answer — each with its replies in one transaction', (t) => {
  const store = tempStore(t);
  const reply = { topic: 'p/d/reply', payload: '{"state":"accepted"}', kind: 'reply' as const };
  const a = store.acceptJob({ cmdId: 'a', type: 'optimize', args: { model: 'm' }, replyTo: { topic: 'resp', correlationData: 'AAE=' } }, { state: 'accepted' }, [reply, { ...reply, topic: 'resp', properties: { correlationData: 'AAE=' } }]);
  store.acceptJob({ cmdId: 'b', type: 'bench', args: { model: 'm' }, expiresAt: 123 }, { state: 'accepted' });
  t.like(a, { cmdId: 'a', state: 'queued', replyTo: { topic: 'resp', correlationData: 'AAE=' }, runId: null });
  t.deepEqual(store.commandSeen('a'), { reply: { state: 'accepted' } });
  t.deepEqual(store.peekOutbox(10).map((m) => [m.topic, m.properties]), [['p/d/reply', undefined], ['resp', { correlationData: 'AAE=' }]]);
  t.throws(() => store.acceptJob({ cmdId: 'a', type: 'optimize', args: {} }, {}), { message: /already queued/ });
  t.is(store.countJobs(), 2);
  store.startJob('b');
  store.setJobRun('b', 'run-1');
  t.deepEqual(store.listJobs().map((j) => [j.cmdId, j.state]), [['b', 'running'], ['a', 'queued']]);
  t.is(store.countJobs('queued'), 1);
  t.throws(() => store.startJob('b'), { message: /no queued job/ });
  store.requeueJob('b');
  t.like(store.getJob('b'), { state: 'queued', runId: null, expiresAt: 123 });
  t.deepEqual(store.listJobs().map((j) => j.cmdId), ['a', 'b'], 'a requeued job keeps its place');
  store.answerCommand('a', { state: 'succeeded' }, [{ topic: 'p/d/report', payload: '{}', kind: 'report' }]);
  t.is(store.getJob('a'), undefined);
  t.deepEqual(store.commandSeen('a'), { reply: { state: 'succeeded' } });
  t.is(store.outboxSize(), 3);
  t.is(store.countJobs(), 1);
});

test('one daemon per state directory; the status sequence only grows', (t) => {
  const dir = tempDir(t);
  const lock = takeLock(dir);
  t.is((t.throws(() => {
    // Another process holds it: simulate with a lock file naming a live pid (ours is excluded, so use the parent's).
    lock.release();
    writeFileSync(join(dir, 'edgeq-run.lock'), JSON.stringify({ pid: process.ppid, token: null }));
    takeLock(dir);
  }) as EdgeqError).code, 'E_ALREADY_RUNNING');
  // A lock whose process is gone is taken over.
  writeFileSync(join(dir, 'edgeq-run.lock'), JSON.stringify({ pid: 999_999_999, token: null }));
  const again = takeLock(dir);
  again.release();
  t.is(readSeq(dir), 0);
  t.is(nextSeq(dir), 1);
  t.is(nextSeq(dir), 2);
  t.is(readSeq(dir), 2);
});

test('edgeq run: a bad configuration exits 78 with one clear line', (t) => {
  const dir = tempDir(t);
  const r = spawnSync(process.execPath, [CLI, 'run', '--broker', 'http://x', '--device-id', 'd1', '--state-dir', dir], { encoding: 'utf8', env: { ...process.env, EDGEQ_CONFIG: '' } });
  t.is(r.status, 78);
  t.regex(r.stderr, /edgeq: error: --broker: "http:\/\/x": the scheme must be mqtt:\/\//);
  t.is(r.stdout, '');
  const j = spawnSync(process.execPath, [CLI, 'run', '--device-id', 'a/b', '--broker', 'mqtt://b', '--state-dir', dir, '--json'], { encoding: 'utf8', env: { ...process.env, EDGEQ_CONFIG: '' } });
  t.is(j.status, 78);
  t.like(JSON.parse(j.stdout), { ok: false, error: { code: 'E_CONFIG_INVALID' } });
});
