/**
 * `npm run bench:fleet`: one fleet controller and N simulated devices (default 1000) on the local
 * broker, all in this process — each device its own MQTT connection with its own will. Two
 * waves: `status` to every device, then a fake `optimize` that each device answers at once with
 * accepted → running → succeeded and a run report. Measures commands/s end to end (first
 * publish → the last terminal reply stored by the controller) and counts what got lost:
 * commands without a terminal reply, replies and reports the controller did not store (must be
 * 0). The controller stores into SQLite (a temporary file); with `--pg URL` the same waves run
 * again with a second controller storing into PostgreSQL (a temporary schema, dropped after).
 * Writes the 'fleet' section of bench/RESULTS.md.
 *
 *   npm run bench:fleet -- [--devices N] [--pg postgres://…] [--broker URL] [--batch 100] [--no-write]
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, platform, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { TERMINAL, type CommandType, type Reply } from '../agent/protocol/index.js';
import { FleetController } from '../fleet/controller.js';
import { clearRetained, SimulatedDevice } from '../fleet/sim.js';
import { describeDb, openPgStore, openSqliteStore, type FleetStore } from '../fleet/store/index.js';
import pg from 'pg';
import { writeSection } from './results-md.js';
import { mosquittoVersion } from './mosquitto.js';

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
const N = Number(opt('--devices') ?? 1000);
const BROKER = opt('--broker') ?? process.env.EDGEQ_BROKER ?? 'mqtt://127.0.0.1:1883';
const BATCH = Number(opt('--batch') ?? 100);
const PG_URL = opt('--pg');
const WAVE_TIMEOUT_MS = Number(opt('--timeout') ?? 300) * 1000;
const WRITE = !argv.includes('--no-write');
const ROOT = resolve('.');

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const pctl = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];

function openFilesLimit(): number | undefined {
  try {
    const m = /Max open files\s+(\d+)/.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

interface WaveResult {
  store: string;
  type: CommandType;
  commands: number;
  elapsedMs: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  terminal: number;
  succeeded: number;
  noTerminal: number;
  repliesExpected: number;
  repliesStored: number;
  reportsExpected: number;
  reportsStored: number;
}

const lostOf = (r: WaveResult) => r.noTerminal + (r.repliesExpected - r.repliesStored) + (r.reportsExpected - r.reportsStored);

/** One controller on `store`: reads the N retained births, then sends each wave to every device. */
async function runWaves(store: FleetStore, label: string, prefix: string, ids: string[], devices: SimulatedDevice[], invalid: string[]): Promise<{ results: WaveResult[]; statusMs: number; listed: number }> {
  const c = await FleetController.connect({ broker: BROKER, prefix, store, log: (e) => (e.level === 'error' ? process.stderr.write(JSON.stringify(e) + '\n') : undefined) });
  try {
    let failure: Error | undefined;
    c.on('error', (e) => (failure = e));
    c.on('invalid', (t, e) => invalid.push(`${t}: ${e}`));
    const online = new Set<string>();
    c.on('status', (id, s, applied) => {
      if (applied && s.online) online.add(id);
    });
    /** The wave under way: terminal replies by device, replies and reports stored anew. */
    let wave: { cmdId: string; start: number; terminal: Map<string, { state: Reply['state']; ms: number }>; replies: number; reports: number } | undefined;
    c.on('reply', (id, r, stored) => {
      if (!wave || r.cmdId !== wave.cmdId) return;
      if (stored) wave.replies++;
      if (TERMINAL.has(r.state) && !wave.terminal.has(id)) wave.terminal.set(id, { state: r.state, ms: performance.now() - wave.start });
    });
    c.on('report', (_id, _r, stored) => {
      if (wave && stored) wave.reports++;
    });
    const t0 = performance.now();
    await c.subscribe({ status: true, reply: 'fleet', report: 'fleet' });
    const deadline = Date.now() + 60_000;
    while (online.size < ids.length && Date.now() < deadline && !failure) await sleep(20);
    const statusMs = performance.now() - t0;
    const listed = (await store.devices({ online: true })).length;
    process.stderr.write(`[${label}] ${online.size} retained births read in ${(statusMs / 1000).toFixed(2)} s; ${listed} online in the store\n`);

    const results: WaveResult[] = [];
    for (const type of ['status', 'optimize'] as const) {
      const cmdId = randomUUID();
      wave = { cmdId, start: performance.now(), terminal: new Map(), replies: 0, reports: 0 };
      const w = wave;
      const before = new Set(devices.flatMap((d) => d.reports.map((r) => r.id)));
      await c.send(ids, { id: cmdId, type, args: type === 'optimize' ? { model: 'fmnist' } : {} }, 600);
      const end = Date.now() + WAVE_TIMEOUT_MS;
      while (w.terminal.size < ids.length && Date.now() < end && !failure) await sleep(10);
      const elapsedMs = Math.max(...[...w.terminal.values()].map((x) => x.ms), 0);
      const reportsExpected = type === 'optimize' ? ids.length : 0;
      const settleEnd = Date.now() + 10_000;
      while ((w.replies < 3 * ids.length || w.reports < reportsExpected) && Date.now() < settleEnd && !failure) await sleep(20);
      await sleep(500); // a late duplicate would land now
      if (failure) throw failure;
      const times = [...w.terminal.values()].map((x) => x.ms).sort((a, b) => a - b);
      const repliesStored = (await store.replies(cmdId)).length;
      const published = new Set(devices.flatMap((d) => d.reports.map((r) => r.id)).filter((id) => !before.has(id)));
      const reportsStored = type === 'optimize' ? (await store.reports()).filter((r) => published.has(r.id)).length : 0;
      const r: WaveResult = {
        store: label,
        type,
        commands: ids.length,
        elapsedMs,
        perSecond: (w.terminal.size / elapsedMs) * 1000,
        p50Ms: pctl(times, 50),
        p99Ms: pctl(times, 99),
        terminal: w.terminal.size,
        succeeded: [...w.terminal.values()].filter((x) => x.state === 'succeeded').length,
        noTerminal: ids.length - w.terminal.size,
        repliesExpected: 3 * ids.length,
        repliesStored,
        reportsExpected,
        reportsStored,
      };
      results.push(r);
      process.stderr.write(`[${label}] ${type}: ${r.terminal}/${ids.length} terminal in ${(elapsedMs / 1000).toFixed(2)} s = ${r.perSecond.toFixed(0)} commands/s; replies stored ${repliesStored}/${r.repliesExpected}; reports stored ${reportsStored}/${reportsExpected}\n`);
    }
    return { results, statusMs, listed };
  } finally {
    await c.close();
  }
}

async function main(): Promise<void> {
  if (!Number.isInteger(N) || N < 1) throw new Error('--devices must be a positive integer');
  const limit = openFilesLimit();
  if (limit !== undefined && limit < N + 200) throw new Error(`open-files limit ${limit} is too low for ${N} connections: raise it (ulimit -n ${N + 1000}) and rerun`);
  const prefix = `edgeq-scale/${randomUUID().slice(0, 8)}/v1`;
  const dir = mkdtempSync(join(tmpdir(), 'edgeq-fleet-scale-'));
  const ids = Array.from({ length: N }, (_, i) => `sim-${String(i).padStart(5, '0')}`);
  const devices: SimulatedDevice[] = [];
  const invalid: string[] = [];
  const schema = `fleet_scale_${randomUUID().slice(0, 8)}`;
  let pgSchemaMade = false;
  try {
    process.stderr.write(`connecting ${N} simulated devices to ${BROKER} (batches of ${BATCH})\n`);
    const t0 = performance.now();
    for (let i = 0; i < N; i += BATCH) {
      devices.push(...(await Promise.all(ids.slice(i, i + BATCH).map((deviceId, j) => SimulatedDevice.start({ broker: BROKER, prefix, deviceId, arch: (i + j) % 2 ? 'x64' : 'arm64' })))));
    }
    const connectMs = performance.now() - t0;
    process.stderr.write(`${N} devices connected and born in ${(connectMs / 1000).toFixed(1)} s\n`);

    const runs: Array<{ label: string; results: WaveResult[]; statusMs: number; listed: number }> = [];
    const sqlite = await openSqliteStore(join(dir, 'fleet.db'));
    try {
      runs.push({ label: 'sqlite', ...(await runWaves(sqlite, 'sqlite', prefix, ids, devices, invalid)) });
    } finally {
      await sqlite.close();
    }
    if (PG_URL) {
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      await admin.query(`CREATE SCHEMA ${schema}`);
      await admin.end();
      pgSchemaMade = true;
      const store = await openPgStore(PG_URL, { pool: { options: `-c search_path=${schema}` } });
      try {
        runs.push({ label: 'postgres', ...(await runWaves(store, 'postgres', prefix, ids, devices, invalid)) });
      } finally {
        await store.close();
      }
    }

    const all = runs.flatMap((r) => r.results);
    const lost = all.reduce((s, r) => s + lostOf(r), 0);
    const cpu = cpus()[0]?.model ?? 'unknown';
    const md = [
      '## Fleet controller at scale',
      '',
      `Produced by \`npm run bench:fleet -- --devices ${N}${PG_URL ? ` --pg ${describeDb(PG_URL)}` : ''}\` (${new Date().toISOString().slice(0, 10)}) on ${cpu} × ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ${platform()} ${release()}, Node ${process.version}, ${mosquittoVersion() ?? 'unknown broker'} (stock configuration) on loopback.`,
      `One controller (\`FleetController\`, as \`edgeq fleet\` uses it: MQTT 5, QoS 1, each message stored before its PUBACK) and ${N} simulated devices (\`fleet/sim.ts\`) in one Node process, each device its own MQTT 5 connection with its own retained birth and will — ${N + 1} connections. The devices answer at once (no quantization): accepted → running → succeeded, and \`optimize\` also publishes a run report, so the figures measure the messaging and storage path, not the work. The controller's store is SQLite (a WAL file)${PG_URL ? ', then, with a second controller on the same devices, PostgreSQL (local server, default durable commits)' : ''}.`,
      '',
      `Largest N tried: **${N}** devices. Connecting them and publishing their births took ${(connectMs / 1000).toFixed(1)} s (batches of ${BATCH}). ${runs.map((r) => `The ${r.label} controller read the ${N} retained births in ${(r.statusMs / 1000).toFixed(2)} s and listed ${r.listed} devices online`).join('. ')}.`,
      '',
      '| store | wave | commands | time to the last terminal reply | commands/s | per-device latency p50 / p99 | terminal replies | replies stored | reports stored | lost |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
      ...all.map((r) => `| ${r.store} | \`${r.type}\` to every device | ${r.commands} | ${(r.elapsedMs / 1000).toFixed(2)} s | ${r.perSecond.toFixed(0)} | ${r.p50Ms.toFixed(0)} / ${r.p99Ms.toFixed(0)} ms | ${r.terminal} (${r.succeeded} succeeded) | ${r.repliesStored} / ${r.repliesExpected} | ${r.reportsExpected ? `${r.reportsStored} / ${r.reportsExpected}` : '—'} | ${lostOf(r)} |`),
      '',
      `Lost messages in all: **${lost}** (commands without a terminal reply, replies and reports not stored). Invalid messages: ${invalid.length}.`,
      '',
      "Commands/s is end to end: the controller publishes one command per device (QoS 1, 256 in flight), each device answers, and the clock stops when the controller has stored the last terminal reply; per-device latency runs from the start of the wave to that device's terminal reply, so it includes queueing behind the other devices. Devices, controller and broker share the machine's cores, so this is the whole fleet on one box, not the controller alone. The controller handles one message at a time (mqtt.js acknowledges a message only when its handler is done, and the handler returns once the message is stored), so its rate is bounded by one store write per message: about 0.1 ms with SQLite here, a round trip and a durable commit with PostgreSQL; several instances on a shared subscription (`--share`) split that load.",
      'mosquitto queues at most 1000 QoS 1 messages per client beyond those in flight (`max_queued_messages`) and drops the rest; the controller announces an MQTT 5 receive maximum of 65535 so that the replies of a whole fleet answering at once stay in flight instead (without it, a first run with 1000 devices lost a quarter of the replies at mosquitto\'s default of 20 in flight).',
    ].join('\n');
    process.stdout.write(md + '\n');
    if (WRITE) {
      writeSection(join(ROOT, 'bench/RESULTS.md'), 'fleet', md);
      process.stderr.write('wrote the fleet section of bench/RESULTS.md\n');
    }
    if (lost > 0 || invalid.length > 0) process.exitCode = 1;
  } finally {
    process.stderr.write('stopping the simulated devices\n');
    for (let i = 0; i < devices.length; i += BATCH) await Promise.all(devices.slice(i, i + BATCH).map((d) => d.stop()));
    await clearRetained(BROKER, prefix, ids).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    if (pgSchemaMade && PG_URL) {
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await admin.end();
    }
  }
}

await main();
