/**
 * The controller against the real broker (mosquitto on 127.0.0.1:1883) with simulated devices:
 * the device list from retained status, stale wills, `fleet send --wait` exit codes, bad
 * messages ignored, and `fleet watch` with its persistent session. Each test has its own topic
 * prefix and clears its retained messages after.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { FleetController } from '../../fleet/controller.js';
import { openSqliteStore } from '../../fleet/store/index.js';
import type { DeviceRecord, ReportRecord } from '../../fleet/store/types.js';
import { CLI, tempDir } from '../helpers/fixtures.js';
import { BROKER, fleetCli, rand, services, simFleet, testPrefix, until } from './helpers.js';

const jsonLines = (s: string) => s.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);

test('fleet devices lists the fleet from retained status: online/offline, arch, profile, models; --where and --online filter', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const dir = tempDir(t, 'edgeq-fleet-');
  const fleet = simFleet(t, prefix);
  await fleet.start('cam-01', { seq: 3 });
  await fleet.start('cam-02', { arch: 'x64' });
  const gone = await fleet.start('cam-03');
  await gone.stop();
  const r = await fleetCli(['devices', '--prefix', prefix, '--state-dir', dir, '--json']);
  t.is(r.status, 0, r.stderr);
  const devices = JSON.parse(r.stdout) as DeviceRecord[];
  t.deepEqual(devices.map((d) => [d.deviceId, d.online, d.arch, d.profile, d.seq]), [
    ['cam-01', true, 'arm64', 'qnnpack', 3],
    ['cam-02', true, 'x64', 'fbgemm', 1],
    // Stopped before this controller ever saw its birth: the retained offline status is all there is.
    ['cam-03', false, null, null, 1],
  ]);
  t.deepEqual(devices[0].models, { fmnist: { version: 1, kind: 'fp32' } });
  const arm = await fleetCli(['devices', '--prefix', prefix, '--state-dir', dir, '--json', '--where', 'arch=arm64', '--online']);
  t.deepEqual((JSON.parse(arm.stdout) as DeviceRecord[]).map((d) => d.deviceId), ['cam-01']);
  const text = await fleetCli(['devices', '--prefix', prefix, '--state-dir', dir, '--no-refresh']);
  t.is(text.status, 0, text.stderr);
  t.regex(text.stdout, /^device\s+online\s+arch\s+profile/m);
  t.regex(text.stdout, /^cam-03\s+no\s+—\s+—/m);
  t.regex(text.stdout, /3 devices, 2 online/);
});

test('a will older than the newest birth is ignored; the current will (a crash) marks the device offline', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const store = await openSqliteStore(join(tempDir(t, 'edgeq-fleet-'), 'fleet.db'));
  t.teardown(() => store.close());
  const c = await FleetController.connect({ broker: BROKER, prefix, store, log: () => undefined });
  t.teardown(() => c.close());
  const statuses: Array<[string, boolean, number, boolean]> = [];
  c.on('status', (id, s, applied) => statuses.push([id, s.online, s.seq, applied]));
  await c.subscribe({ status: true });
  const fleet = simFleet(t, prefix);
  const dev = await fleet.start('cam-01', { seq: 5 });
  await until(() => statuses.length === 1, 5000, 'the birth');
  // The broker publishes an old session's will (seq 4) after the new birth (seq 5).
  await dev.publishRaw('status', JSON.stringify(dev.will(4)), true);
  await until(() => statuses.length === 2, 5000, 'the stale will');
  t.deepEqual(statuses[1], ['cam-01', false, 4, false]);
  t.true((await store.devices())[0].online);
  // A new controller reading the retained (stale) will does not believe it either.
  const again = await fleetCli(['devices', '--prefix', prefix, '--db', join(tempDir(t), 'other.db'), '--json']);
  t.is((JSON.parse(again.stdout) as DeviceRecord[])[0].online, false, 'without the birth, the stale will is all it knows');
  // The device dies without DISCONNECT: the broker publishes its will (seq 5).
  await dev.crash();
  await until(() => statuses.length === 3, 10_000, 'the will');
  t.deepEqual(statuses[2], ['cam-01', false, 5, true]);
  const [d] = await store.devices();
  t.false(d.online);
  t.is(d.seq, 5);
  t.is(d.arch, 'arm64', 'the birth facts stay');
});

test('send --wait: exit 0 when every device succeeded, printing replies and the report; the store has both', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const dir = tempDir(t, 'edgeq-fleet-');
  const fleet = simFleet(t, prefix);
  await fleet.start('cam-01');
  await fleet.start('cam-02', { progressSteps: 2 });
  const r = await fleetCli(['send', 'cam-01,cam-02', 'optimize', 'model=fmnist', 'method=entropy', '--wait', '--timeout', '30', '--prefix', prefix, '--state-dir', dir]);
  t.is(r.status, 0, r.stderr + r.stdout);
  t.regex(r.stdout, /^cam-01\s+accepted\s+optimize/m);
  t.regex(r.stdout, /^cam-02\s+running\s+optimize\s+67%/m);
  t.regex(r.stdout, /^cam-01\s+report\s+fmnist@v1/m);
  t.regex(r.stdout, /^cam-02\s+succeeded\s+optimize\s+\{"reportId":/m);
  t.regex(r.stdout, /^2 succeeded$/m);
  for (const d of fleet.devices) t.deepEqual(d.commands.map((c) => [c.type, c.args]), [['optimize', { model: 'fmnist', method: 'entropy' }]]);
  const reports = await fleetCli(['reports', '--state-dir', dir, '--json']);
  t.deepEqual((JSON.parse(reports.stdout) as ReportRecord[]).map((x) => x.deviceId), ['cam-01', 'cam-02']);
  const table = await fleetCli(['reports', '--state-dir', dir, '--model', 'fmnist']);
  t.regex(table.stdout, /^device\s+model\s+profile\s+method\s+size fp32 → int8\s+p50 fp32\s+p50 int8\s+speedup/m);
  t.regex(table.stdout, /^cam-02\s+fmnist@v1\s+qnnpack\s+histogram\s+505\.1 KiB → 133\.6 KiB/m);
  // --all --json: one JSON object per line, a summary last.
  const all = await fleetCli(['send', '--all', 'status', '--wait', '--json', '--timeout', '30', '--prefix', prefix, '--state-dir', dir]);
  t.is(all.status, 0, all.stderr);
  const lines = jsonLines(all.stdout);
  t.is(lines[0].event, 'command');
  t.deepEqual(lines[0].targets, ['cam-01', 'cam-02']);
  const done = lines[lines.length - 1];
  t.like(done, { event: 'done', ok: true, succeeded: ['cam-01', 'cam-02'], failed: [], timedOut: [] });
  t.is(lines.filter((l) => l.event === 'reply' && l.state === 'succeeded').length, 2);
});

test('send --wait: exit 1 when a device fails, rejects or does not answer in time, naming each', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const dir = tempDir(t, 'edgeq-fleet-');
  const fleet = simFleet(t, prefix);
  await fleet.start('ok-1');
  await fleet.start('bad-1', { behaviour: () => ({ state: 'failed', code: 'E_MODEL_INVALID', message: 'model file is not ONNX' }) });
  await fleet.start('rej-1', { behaviour: () => ({ state: 'rejected', code: 'E_BUSY', message: 'a job is running' }) });
  await fleet.start('mute-1', { behaviour: () => ({ state: 'ignore' }) });
  const r = await fleetCli(['send', '--all', 'bench', 'model=fmnist', '--wait', '--timeout', '3', '--prefix', prefix, '--state-dir', dir]);
  t.is(r.status, 1, r.stderr + r.stdout);
  t.regex(r.stdout, /^bad-1\s+failed\s+bench\s+E_MODEL_INVALID: model file is not ONNX/m);
  t.regex(r.stdout, /^rej-1\s+rejected\s+bench\s+E_BUSY: a job is running/m);
  t.regex(r.stdout, /^1 succeeded; 2 did not: bad-1 failed \(E_MODEL_INVALID\), rej-1 rejected \(E_BUSY\); 1 timed out after 3 s: mute-1 \(no reply\)$/m);
  // The same with --json, one device: a rejection alone is a failure.
  const j = await fleetCli(['send', 'rej-1', 'status', '--wait', '--json', '--timeout', '10', '--prefix', prefix, '--state-dir', dir]);
  t.is(j.status, 1);
  const done = jsonLines(j.stdout).pop();
  t.like(done, { event: 'done', ok: false, succeeded: [], failed: [{ deviceId: 'rej-1', state: 'rejected', error: { code: 'E_BUSY', message: 'a job is running' } }], timedOut: [] });
  // Without --wait: sent, exit 0.
  const fire = await fleetCli(['send', 'ok-1', 'status', '--json', '--prefix', prefix, '--state-dir', dir]);
  t.is(fire.status, 0, fire.stderr);
  t.like(JSON.parse(fire.stdout), { ok: true, type: 'status', targets: ['ok-1'] });
  await until(() => fleet.devices[0].commands.length === 2, 5000, 'the command sent without --wait');
});

test('send checks the command locally: bad arguments and unknown types are usage errors (exit 2), no target or no broker exit 1', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const dir = tempDir(t, 'edgeq-fleet-');
  const fleet = simFleet(t, prefix);
  await fleet.start('cam-01');
  const common = ['--prefix', prefix, '--state-dir', dir, '--json'];
  const bad = await fleetCli(['send', 'cam-01', 'optimize', 'model=fmnist', 'runs=many', ...common]);
  t.is(bad.status, 2);
  t.like(JSON.parse(bad.stdout), { ok: false, error: { code: 'E_COMMAND_INVALID' } });
  t.regex((JSON.parse(bad.stdout) as { error: { message: string } }).error.message, /^optimize: runs: /);
  const unknown = await fleetCli(['send', 'cam-01', 'reboot', ...common]);
  t.is(unknown.status, 2);
  t.like(JSON.parse(unknown.stdout), { error: { code: 'E_COMMAND_UNKNOWN' } });
  const missing = await fleetCli(['send', 'cam-01', 'capture', '{"model": "fmnist"}', ...common]);
  t.is(missing.status, 2);
  t.regex(JSON.parse(missing.stdout).error.message, /capture: action/);
  const none = await fleetCli(['send', '--where', 'arch=sparc', 'status', ...common]);
  t.is(none.status, 1);
  t.like(JSON.parse(none.stdout), { error: { code: 'E_NO_TARGETS' } });
  const noBroker = await fleetCli(['send', 'cam-01', 'status', '--broker', 'mqtt://127.0.0.1:1', ...common]);
  t.is(noBroker.status, 1);
  t.like(JSON.parse(noBroker.stdout), { error: { code: 'E_BROKER' } });
  const where = await fleetCli(['devices', '--where', 'colour=red', ...common]);
  t.is(where.status, 2);
  // A model name that looks like a number stays a string; config keys nest with a dot.
  const num = await fleetCli(['send', 'cam-01', 'eval', 'model=2024', 'version=3', '--wait', '--timeout', '10', ...common]);
  t.is(num.status, 0, num.stdout + num.stderr);
  const cfg = await fleetCli(['send', 'cam-01', 'config', 'set.quantize.method=entropy', 'set.threads=2', '--wait', '--timeout', '10', ...common]);
  t.is(cfg.status, 0, cfg.stdout + cfg.stderr);
  t.deepEqual(fleet.devices[0].commands.map((c) => c.args), [{ model: '2024', version: 3 }, { set: { 'quantize.method': 'entropy', threads: 2 } }]);
  t.is(fleet.devices[0].commands.length, 2, 'nothing invalid reached the device');
});

test('bad messages are logged and ignored, and the controller goes on storing', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const store = await openSqliteStore(join(tempDir(t, 'edgeq-fleet-'), 'fleet.db'));
  t.teardown(() => store.close());
  const logged: string[] = [];
  const c = await FleetController.connect({ broker: BROKER, prefix, store, log: (e) => logged.push(e.event) });
  t.teardown(() => c.close());
  const invalid: string[] = [];
  c.on('invalid', (_topic, e) => invalid.push(e));
  await c.subscribe({ status: true, reply: 'fleet', report: 'fleet' });
  const fleet = simFleet(t, prefix);
  const dev = await fleet.start('cam-01');
  await dev.publishRaw('reply', 'not json');
  await dev.publishRaw('reply', JSON.stringify({ cmdId: 'x', deviceId: 'cam-99', state: 'succeeded', at: new Date().toISOString() }));
  await dev.publishRaw('report', JSON.stringify({ schema: 'edgeq.report/v2', id: 'r' }));
  await dev.publishRaw('report', JSON.stringify({ schema: 'edgeq.report/v1', id: 'r' }));
  await dev.publishRaw('status', JSON.stringify({ online: true }));
  const report = await dev.publishReport();
  await until(async () => (await store.reports()).length === 1, 5000, 'the valid report');
  t.is((await store.reports())[0].id, report.id);
  t.is(invalid.length, 5, invalid.join('\n'));
  t.regex(invalid[0], /^reply: not JSON/);
  t.regex(invalid[1], /deviceId cam-99 on the topic of cam-01/);
  t.regex(invalid[2], /^report: schema: /);
  t.regex(invalid[3], /^report: /);
  t.regex(invalid[4], /^status: /);
  t.is(logged.filter((e) => e === 'invalid_message').length, 5);
  t.deepEqual(await store.replies('x'), []);
});

/** A child process whose stdout lines can be awaited. */
function streamCli(args: string[]) {
  const child = spawn(process.execPath, [CLI, 'fleet', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let buf = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop() ?? '';
    lines.push(...parts);
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  return { child, lines, exited, stderr: () => stderr };
}

test('watch prints replies and reports live; its persistent session keeps what arrives while it is down', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const prefix = testPrefix();
  const dir = tempDir(t, 'edgeq-fleet-');
  const clientId = `edgeq-test-watch-${rand()}`;
  t.teardown(async () => {
    // Remove the persistent session from the broker.
    const c = await mqtt.connectAsync(BROKER, { protocolVersion: 5, clientId, clean: true, properties: { sessionExpiryInterval: 0 } }, false);
    await c.endAsync();
  });
  const fleet = simFleet(t, prefix);
  const dev = await fleet.start('cam-01');
  const args = ['watch', '--json', '--prefix', prefix, '--state-dir', dir, '--client-id', clientId, '--session-expiry', '120'];
  const w1 = streamCli(args);
  t.teardown(() => void w1.child.kill('SIGKILL'));
  const events = (w: { lines: string[] }) => w.lines.map((l) => JSON.parse(l) as { event: string; deviceId?: string; report?: { id: string } });
  await until(() => events(w1).some((e) => e.event === 'status' && e.deviceId === 'cam-01'), 15_000, 'the retained status');
  const r1 = await dev.publishReport();
  await until(() => events(w1).some((e) => e.event === 'report' && e.report?.id === r1.id), 10_000, 'the live report');
  w1.child.kill('SIGINT');
  t.is(await w1.exited, 0, w1.stderr());
  // Published while no watch runs: the broker keeps it for the session.
  const r2 = await dev.publishReport();
  const w2 = streamCli(args);
  t.teardown(() => void w2.child.kill('SIGKILL'));
  await until(() => events(w2).some((e) => e.event === 'report' && e.report?.id === r2.id), 15_000, 'the report sent while watch was down');
  w2.child.kill('SIGTERM');
  t.is(await w2.exited, 0, w2.stderr());
  const stored = await fleetCli(['reports', '--state-dir', dir, '--history', '--json']);
  t.deepEqual((JSON.parse(stored.stdout) as ReportRecord[]).map((r) => r.id).sort(), [r1.id, r2.id].sort());
});
