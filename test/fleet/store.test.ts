/**
 * The fleet store: one suite, run against SQLite (a temporary file) and PostgreSQL (a schema of
 * each test's own), so the two implementations answer alike.
 */
import test, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import pg from 'pg';
import { PROTOCOL_VERSION, type Reply, type Status } from '../../agent/protocol/index.js';
import { parseReport } from '../../agent/protocol/report.js';
import { sampleReport } from '../../fleet/sim.js';
import { modelKey, openSqliteStore, SCHEMA_VERSION, type FleetStore } from '../../fleet/store/index.js';
import { numberPlaceholders } from '../../fleet/store/sql.js';
import { tempDir } from '../helpers/fixtures.js';
import { PG_URL, pgSchema, services } from './helpers.js';

type Opener = (t: ExecutionContext) => Promise<FleetStore | null>;

const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();

function birth(deviceId: string, seq: number, extra: Partial<Status> = {}): Status {
  return {
    online: true,
    deviceId,
    seq,
    at: at(seq),
    protocol: PROTOCOL_VERSION,
    agentVersion: '0.1.0',
    device: { hostname: `${deviceId}.local`, arch: 'arm64', cpu: 'Cortex-A72', cores: 4, isa: ['neon'], os: 'linux', node: 'v20', onnxruntime: '1.30.0' },
    profile: { name: 'qnnpack', reason: 'ARM64' },
    models: { fmnist: { version: 2, kind: 'int8' } },
    ...extra,
  };
}

const will = (deviceId: string, seq: number): Status => ({ online: false, deviceId, seq, at: at(seq + 30), protocol: PROTOCOL_VERSION });

function reply(cmdId: string, deviceId: string, state: Reply['state'], s: number, extra: Partial<Reply> = {}): Reply {
  return { cmdId, deviceId, state, at: at(s), ...extra };
}

function suite(name: string, open: Opener): void {
  test(`${name}: migrations are recorded once and re-running them is harmless`, async (t) => {
    const s = await open(t);
    if (!s) return;
    t.is(await s.migrate(), SCHEMA_VERSION);
    t.is(await s.migrate(), SCHEMA_VERSION);
    t.deepEqual(await s.devices(), []);
  });

  test(`${name}: a birth registers a device; a will older than the stored birth is ignored, a current one applies`, async (t) => {
    const s = await open(t);
    if (!s) return;
    t.true(await s.upsertStatus('cam-1', birth('cam-1', 1)));
    t.true(await s.upsertStatus('cam-1', birth('cam-1', 2)));
    // The broker publishes the will of session 1 after session 2's birth: stale.
    t.false(await s.upsertStatus('cam-1', will('cam-1', 1)));
    let [d] = await s.devices();
    t.is(d.deviceId, 'cam-1');
    t.true(d.online);
    t.is(d.seq, 2);
    t.is(d.arch, 'arm64');
    t.is(d.profile, 'qnnpack');
    t.is(d.hostname, 'cam-1.local');
    t.is(d.agentVersion, '0.1.0');
    t.deepEqual(d.models, { fmnist: { version: 2, kind: 'int8' } });
    t.is(d.status?.seq, 2);
    // The will of the current session: offline, the birth's facts kept.
    t.true(await s.upsertStatus('cam-1', will('cam-1', 2)));
    [d] = await s.devices();
    t.false(d.online);
    t.is(d.arch, 'arm64');
    t.is(d.status?.online, true, 'status keeps the last birth');
    // A device whose state was wiped starts its seq again: its birth still applies.
    t.true(await s.upsertStatus('cam-1', birth('cam-1', 0)));
    [d] = await s.devices();
    t.true(d.online);
    t.is(d.seq, 0);
  });

  test(`${name}: a will from an unknown device registers it offline`, async (t) => {
    const s = await open(t);
    if (!s) return;
    t.true(await s.upsertStatus('ghost', will('ghost', 4)));
    const [d] = await s.devices();
    t.is(d.online, false);
    t.is(d.arch, null);
    t.is(d.status, null);
    t.deepEqual(d.models, {});
  });

  test(`${name}: devices() filters by online, arch, profile and ids`, async (t) => {
    const s = await open(t);
    if (!s) return;
    await s.upsertStatus('a', birth('a', 1));
    await s.upsertStatus('b', birth('b', 1, { device: { ...birth('b', 1).device!, arch: 'x64' }, profile: { name: 'fbgemm', reason: 'x86' } }));
    await s.upsertStatus('c', birth('c', 1));
    await s.upsertStatus('c', will('c', 1));
    const ids = async (f: Parameters<FleetStore['devices']>[0]) => (await s.devices(f)).map((d) => d.deviceId);
    t.deepEqual(await ids({}), ['a', 'b', 'c']);
    t.deepEqual(await ids({ online: true }), ['a', 'b']);
    t.deepEqual(await ids({ online: false }), ['c']);
    t.deepEqual(await ids({ arch: 'arm64' }), ['a', 'c']);
    t.deepEqual(await ids({ arch: 'arm64', online: true }), ['a']);
    t.deepEqual(await ids({ profile: 'fbgemm' }), ['b']);
    t.deepEqual(await ids({ ids: ['c', 'a', 'zz'] }), ['a', 'c']);
    t.deepEqual(await ids({ ids: [] }), []);
  });

  test(`${name}: a report is stored once by its id; the fleet table reads its figures`, async (t) => {
    const s = await open(t);
    if (!s) return;
    await s.upsertStatus('cam-1', birth('cam-1', 1));
    const r = sampleReport('cam-1', 'fmnist@v1', { createdAt: at(10) });
    t.true(parseReport(JSON.parse(JSON.stringify(r))).ok);
    t.true(await s.recordReport('cam-1', r));
    t.false(await s.recordReport('cam-1', r), 'a redelivered report is not stored again');
    const rows = await s.reports();
    t.is(rows.length, 1);
    const row = rows[0];
    t.is(row.id, r.id);
    t.is(row.deviceId, 'cam-1');
    t.is(row.model, 'fmnist@v1');
    t.is(row.int8Model, r.int8.name);
    t.is(row.createdAt, r.createdAt);
    t.is(row.profile, 'qnnpack');
    t.is(row.method, 'histogram');
    t.is(row.fp32Bytes, r.model.sizeBytes);
    t.is(row.int8Bytes, r.int8.sizeBytes);
    t.is(row.fp32P50Ms, r.latency.fp32.p50Ms);
    t.is(row.int8P50Ms, r.latency.int8.p50Ms);
    t.is(row.speedup, r.latency.speedup);
    t.is(row.fp32Top1, r.accuracy.fp32Top1 ?? null);
    t.is(row.int8Top1, r.accuracy.int8Top1 ?? null);
    t.is(row.dropPoints, r.accuracy.dropPoints ?? null);
    t.is(row.agreement, r.accuracy.agreement ?? null);
    t.is(row.accuracySource, 'eval-data');
    t.is(row.samples, 1000);
    const [d] = await s.devices();
    t.is(d.lastReport?.id, r.id);
    t.is(d.lastReport?.model, 'fmnist@v1');
    t.is(d.lastReport?.speedup, r.latency.speedup);
  });

  test(`${name}: reports by model (with or without @vN/.onnx), by device, newest per device and model`, async (t) => {
    const s = await open(t);
    if (!s) return;
    const add = (dev: string, model: string, sec: number) => s.recordReport(dev, sampleReport(dev, model, { createdAt: at(sec) }));
    await add('a', 'fmnist@v1', 1);
    await add('a', 'fmnist@v2', 5);
    await add('a', 'resnet.onnx', 3);
    await add('b', 'fmnist@v1', 2);
    t.is((await s.reports()).length, 4);
    t.deepEqual((await s.reports({ model: 'fmnist' })).map((r) => [r.deviceId, r.model]), [['a', 'fmnist@v2'], ['a', 'fmnist@v1'], ['b', 'fmnist@v1']]);
    t.deepEqual((await s.reports({ model: 'fmnist@v1' })).map((r) => r.deviceId), ['a', 'b']);
    t.deepEqual((await s.reports({ model: 'resnet' })).map((r) => r.model), ['resnet.onnx']);
    t.deepEqual((await s.reports({ model: 'resnet.onnx' })).map((r) => r.model), ['resnet.onnx']);
    t.deepEqual((await s.reports({ deviceId: 'b' })).map((r) => r.model), ['fmnist@v1']);
    t.deepEqual((await s.reports({ latest: true })).map((r) => [r.deviceId, r.model]), [['a', 'fmnist@v2'], ['a', 'resnet.onnx'], ['b', 'fmnist@v1']]);
    t.deepEqual((await s.reports({ latest: true, model: 'fmnist' })).map((r) => [r.deviceId, r.model]), [['a', 'fmnist@v2'], ['b', 'fmnist@v1']]);
    // A device known only from its reports is listed, online unknown, with its newest report.
    const devices = await s.devices();
    t.deepEqual(devices.map((d) => [d.deviceId, d.online, d.lastReport?.model]), [['a', null, 'fmnist@v2'], ['b', null, 'fmnist@v1']]);
  });

  test(`${name}: replies are stored once each and read back in order`, async (t) => {
    const s = await open(t);
    if (!s) return;
    const acc = reply('c1', 'a', 'accepted', 1, { type: 'optimize' });
    t.true(await s.recordReply('a', acc));
    t.false(await s.recordReply('a', acc), 'the same reply delivered twice');
    t.true(await s.recordReply('a', reply('c1', 'a', 'running', 2, { progress: 0.5, stage: 'calibrate' })));
    t.true(await s.recordReply('a', reply('c1', 'a', 'succeeded', 2, { result: { reportId: 'r1' } })));
    t.true(await s.recordReply('b', reply('c1', 'b', 'failed', 1, { error: { code: 'E_X', message: 'no' } })));
    t.true(await s.recordReply('b', reply('c2', 'b', 'accepted', 1)));
    const rows = await s.replies('c1');
    t.deepEqual(rows.map((r) => [r.deviceId, r.state]), [['a', 'accepted'], ['b', 'failed'], ['a', 'running'], ['a', 'succeeded']]);
    t.is(rows[2].progress, 0.5);
    t.is(rows[0].type, 'optimize');
    t.deepEqual(rows[3].reply.result, { reportId: 'r1' });
    t.deepEqual(rows[1].reply.error, { code: 'E_X', message: 'no' });
    t.deepEqual(await s.replies('nope'), []);
    t.deepEqual((await s.devices()).map((d) => [d.deviceId, d.online]), [['a', null], ['b', null]]);
  });
}

suite('sqlite', async (t) => {
  const s = await openSqliteStore(join(tempDir(t, 'edgeq-fleet-'), 'state', 'fleet.db'));
  t.teardown(() => s.close());
  return s;
});

suite('postgres', async (t) => {
  if (!(await services(t, 'postgres'))) return null;
  return (await pgSchema(t)).open();
});

test('sqlite: the store survives reopening', async (t) => {
  const path = join(tempDir(t, 'edgeq-fleet-'), 'fleet.db');
  const a = await openSqliteStore(path);
  await a.upsertStatus('cam-1', birth('cam-1', 3));
  await a.recordReport('cam-1', sampleReport('cam-1'));
  await a.close();
  const b = await openSqliteStore(path);
  t.teardown(() => b.close());
  t.is((await b.devices()).length, 1);
  t.is((await b.reports()).length, 1);
});

test('postgres: instances starting together migrate once (advisory lock), and write one table', async (t) => {
  if (!(await services(t, 'postgres'))) return;
  const { schema, open } = await pgSchema(t);
  const stores = await Promise.all([open(), open(), open()]);
  const c = new pg.Client({ connectionString: PG_URL, options: `-c search_path=${schema}` });
  await c.connect();
  t.teardown(() => c.end());
  const versions = await c.query('SELECT version FROM fleet_schema');
  t.deepEqual(versions.rows.map((r: { version: number }) => r.version), [SCHEMA_VERSION]);
  const r = sampleReport('cam-1');
  const added = await Promise.all(stores.map((s) => s.recordReport('cam-1', r)));
  t.is(added.filter(Boolean).length, 1, 'the same report from three instances is stored once');
  for (const s of stores) t.is((await s.reports()).length, 1);
});

test('placeholders are numbered for PostgreSQL; model keys drop @vN and .onnx', (t) => {
  t.is(numberPlaceholders('SELECT ? , ?, x = ?'), 'SELECT $1 , $2, x = $3');
  t.is(modelKey('fmnist@v12'), 'fmnist');
  t.is(modelKey('model.onnx'), 'model');
  t.is(modelKey('model.ONNX'), 'model');
  t.is(modelKey('a@v1.onnx'), 'a@v1');
});
