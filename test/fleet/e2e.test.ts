/**
 * End to end on the real broker: a real daemon (`edgeq run`) and the real controller CLI
 * (`edgeq fleet`). `fleet send DEV optimize --wait` sees accepted, running with progress and
 * succeeded; `fleet reports` then shows the device's fp32-vs-int8 row from the report the
 * daemon published.
 */
import test from 'ava';
import { join } from 'node:path';
import { device, prepare, spawnDaemon, watch } from '../helpers/daemon.js';
import { BROKER, fleetCli, services } from './helpers.js';

test('fleet send DEV optimize: accepted, running with progress, succeeded; fleet reports shows the report', async (t) => {
  if (!(await services(t, 'mqtt'))) return;
  const d = device();
  const p = await prepare(t, BROKER, d, {}, 200);
  const daemon = spawnDaemon(t, p.config);
  await daemon.waitLog('ready');
  const db = join(p.dir, 'fleet.db');
  const common = ['--broker', BROKER, '--prefix', d.prefix, '--db', db];
  // Also clears the retained status this test leaves on the shared broker when it ends.
  await watch(t, BROKER, d);

  const devices = await fleetCli(['devices', ...common, '--json']);
  t.is(devices.status, 0, devices.stderr);
  const listed = JSON.parse(devices.stdout) as Array<{ id?: string; deviceId?: string; online: boolean; arch?: string }>;
  const me = listed.find((x) => (x.id ?? x.deviceId) === d.id);
  t.truthy(me, devices.stdout);
  t.true(me!.online);

  const sent = await fleetCli(['send', d.id, 'optimize', 'model=fmnist', 'runs=5', ...common, '--wait', '--json', '--timeout', '300'], { timeoutMs: 320_000 });
  t.is(sent.status, 0, `${sent.stderr}\n${sent.stdout}`);
  const lines = sent.stdout.split('\n').filter((l) => l.trim().startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  const replies = lines.map((l) => (l.reply ?? l) as { state?: string; progress?: number; deviceId?: string });
  const states = replies.map((r) => r.state).filter(Boolean);
  t.true(states.includes('accepted'), states.join(' '));
  t.true(replies.some((r) => r.state === 'running' && typeof r.progress === 'number'), `running with progress: ${states.join(' ')}`);
  t.is(states[states.length - 1], 'succeeded', states.join(' '));
  t.true(states.indexOf('accepted') < states.indexOf('running'));

  const reports = await fleetCli(['reports', ...common, '--json']);
  t.is(reports.status, 0, reports.stderr);
  const rows = JSON.parse(reports.stdout) as Array<Record<string, unknown>>;
  const mine = rows.filter((r) => JSON.stringify(r).includes(d.id));
  t.is(mine.length, 1, reports.stdout);
  t.regex(JSON.stringify(mine[0]), /fmnist/);
  const text = await fleetCli(['reports', ...common]);
  t.is(text.status, 0);
  t.regex(text.stdout, new RegExp(d.id));

  daemon.child.kill('SIGTERM');
  t.is((await daemon.exited).code, 0);
});
