/**
 * Several controllers, one fleet: two instances on one MQTT 5 shared subscription and one
 * PostgreSQL schema. Every report reaches one of them and is stored exactly once, and both
 * answer for the whole fleet (devices from the non-shared status, reports from the shared table).
 */
import test from 'ava';
import pg from 'pg';
import { FleetController } from '../../fleet/controller.js';
import type { DeviceRecord, ReportRecord } from '../../fleet/store/types.js';
import { BROKER, fleetCli, PG_URL, pgSchema, rand, services, simFleet, testPrefix, until } from './helpers.js';

test('two controllers on one shared subscription and one PostgreSQL database: every report stored exactly once, both list the whole fleet', async (t) => {
  if (!(await services(t, 'mqtt', 'postgres'))) return;
  const prefix = testPrefix();
  const share = `g${rand()}`;
  const { schema, open } = await pgSchema(t);
  const stores = [await open(), await open()];
  const delivered = [0, 0];
  const storedNew = [0, 0];
  const controllers: FleetController[] = [];
  for (const [i, store] of stores.entries()) {
    const c = await FleetController.connect({ broker: BROKER, prefix, store, share, clientId: `edgeq-test-${share}-${i}`, log: () => undefined });
    t.teardown(() => c.close());
    c.on('report', (_id, _r, stored) => {
      delivered[i]++;
      if (stored) storedNew[i]++;
    });
    await c.subscribe({ status: true, reply: 'fleet', report: 'fleet' });
    controllers.push(c);
  }
  const fleet = simFleet(t, prefix);
  const DEVICES = 4;
  const PER_DEVICE = 10;
  const K = DEVICES * PER_DEVICE;
  for (let i = 0; i < DEVICES; i++) await fleet.start(`cam-${i}`, { arch: i % 2 ? 'x64' : 'arm64' });
  for (let n = 0; n < PER_DEVICE; n++) await Promise.all(fleet.devices.map((d) => d.publishReport(`m${n % 3}@v1`)));
  await until(() => delivered[0] + delivered[1] >= K, 20_000, `${K} reports delivered`);
  await new Promise((r) => setTimeout(r, 500)); // a duplicate, if any, would arrive now

  t.log(`reports per instance: ${delivered.join(' / ')}`);
  t.is(delivered[0] + delivered[1], K, `each report delivered once in all: ${delivered.join(' + ')}`);
  t.true(delivered[0] > 0 && delivered[1] > 0, `the shared subscription split the reports: ${delivered.join(' / ')}`);
  t.is(storedNew[0] + storedNew[1], K);
  const c = new pg.Client({ connectionString: PG_URL, options: `-c search_path=${schema}` });
  await c.connect();
  t.teardown(() => c.end());
  const counts = await c.query<{ n: string; distinct_ids: string }>('SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS distinct_ids FROM reports');
  t.deepEqual(counts.rows[0], { n: String(K), distinct_ids: String(K) });
  const sent = fleet.devices.flatMap((d) => d.reports.map((r) => r.id)).sort();
  for (const [i, store] of stores.entries()) {
    const reports = await store.reports();
    t.is(reports.length, K, `instance ${i} lists every report`);
    t.deepEqual(reports.map((r) => r.id).sort(), sent);
    const devices = await store.devices();
    t.deepEqual(devices.map((d) => [d.deviceId, d.online, d.arch]), [
      ['cam-0', true, 'arm64'],
      ['cam-1', true, 'x64'],
      ['cam-2', true, 'arm64'],
      ['cam-3', true, 'x64'],
    ]);
    t.true(devices.every((d) => d.lastReport !== null));
  }

  // Commands through either instance, replies stored once in the shared table.
  const id = `cmd-${rand()}`;
  await controllers[0].send(['cam-0', 'cam-1'], { id, type: 'status', args: {} });
  await until(async () => (await stores[1].replies(id)).filter((r) => r.state === 'succeeded').length === 2, 10_000, 'both terminal replies');
  const replies = await stores[0].replies(id);
  t.is(replies.length, 6, 'accepted, running, succeeded from each device, once each');

  // A report PostgreSQL cannot store (a NUL in a string) is dropped as invalid; it blocks nothing.
  const invalid: string[] = [];
  for (const c of controllers) c.on('invalid', (_t, e) => invalid.push(e));
  const poison = { ...fleet.devices[0].reports[0], id: `poison-${rand()}`, quantization: { ...fleet.devices[0].reports[0].quantization, method: 'nul\u0000here' } };
  await fleet.devices[0].publishRaw('report', JSON.stringify(poison));
  const after = await fleet.devices[0].publishReport('after@v1');
  await until(async () => (await stores[0].reports({ model: 'after' })).length === 1, 10_000, 'the report after the poison one');
  t.is(invalid.length, 1);
  t.regex(invalid[0], /^the store refused it: /);
  t.deepEqual((await stores[1].reports({ model: 'after' })).map((r) => r.id), [after.id]);

  // The CLI on the same database answers for the whole fleet.
  const db = `${PG_URL}?options=${encodeURIComponent(`-c search_path=${schema}`)}`;
  const r = await fleetCli(['reports', '--db', db, '--json', '--history']);
  t.is(r.status, 0, r.stderr);
  t.is((JSON.parse(r.stdout) as ReportRecord[]).length, K + 1);
  const latest = await fleetCli(['reports', '--db', db, '--json', '--model', 'm1']);
  t.deepEqual((JSON.parse(latest.stdout) as ReportRecord[]).map((x) => [x.deviceId, x.model]), [0, 1, 2, 3].map((i) => [`cam-${i}`, 'm1@v1']));
  const d = await fleetCli(['devices', '--db', db, '--json', '--no-refresh', '--where', 'arch=x64']);
  t.deepEqual((JSON.parse(d.stdout) as DeviceRecord[]).map((x) => x.deviceId), ['cam-1', 'cam-3']);
});
