/**
 * Real services for the fleet tests: mosquitto on 127.0.0.1:1883 and PostgreSQL on
 * 127.0.0.1:5432 (trust auth, database `test`). Where one is not reachable, a test that needs it
 * passes with a logged reason — or fails when EDGEQ_REQUIRE_SERVICES=1 (CI).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import type { ExecutionContext } from 'ava';
import pg from 'pg';
import { openPgStore } from '../../fleet/store/pg.js';
import type { FleetStore } from '../../fleet/store/types.js';
import { clearRetained, SimulatedDevice, type SimDeviceOptions } from '../../fleet/sim.js';
import { CLI } from '../helpers/fixtures.js';

export const BROKER = process.env.EDGEQ_TEST_BROKER ?? 'mqtt://127.0.0.1:1883';
export const PG_URL = process.env.EDGEQ_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

function tcpReachable(host: string, port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (why: string | null) => {
      s.destroy();
      resolve(why);
    };
    s.setTimeout(2000, () => done(`no answer from ${host}:${port} within 2 s`));
    s.once('connect', () => done(null));
    s.once('error', (e) => done(`${host}:${port}: ${(e as NodeJS.ErrnoException).code ?? e.message}`));
  });
}

let mqttProbe: Promise<string | null> | undefined;
let pgProbe: Promise<string | null> | undefined;

function probeMqtt(): Promise<string | null> {
  const u = new URL(BROKER);
  return (mqttProbe ??= tcpReachable(u.hostname, Number(u.port || 1883)).then((why) => (why ? `no MQTT broker (mosquitto) at ${BROKER}: ${why}` : null)));
}

function probePg(): Promise<string | null> {
  return (pgProbe ??= (async () => {
    const c = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 3000 });
    try {
      await c.connect();
      await c.query('SELECT 1');
      return null;
    } catch (e) {
      return `no PostgreSQL at ${PG_URL}: ${(e as Error).message}`;
    } finally {
      await c.end().catch(() => undefined);
    }
  })());
}

/**
 * True when every named service answers. Otherwise the test is passed with the reason logged
 * (visible in ava's output), or failed when EDGEQ_REQUIRE_SERVICES=1.
 */
export async function services(t: ExecutionContext, ...need: Array<'mqtt' | 'postgres'>): Promise<boolean> {
  const reasons = (await Promise.all(need.map((n) => (n === 'mqtt' ? probeMqtt() : probePg())))).filter((r): r is string => r !== null);
  if (reasons.length === 0) return true;
  if (process.env.EDGEQ_REQUIRE_SERVICES === '1') {
    t.fail(`EDGEQ_REQUIRE_SERVICES=1 and ${reasons.join('; ')}`);
  } else {
    t.log(`SKIPPED: ${reasons.join('; ')}`);
    t.pass();
  }
  return false;
}

export const rand = (): string => randomBytes(5).toString('hex');

/** A topic prefix of this test's own: edgeq-test/<random>/v1. */
export const testPrefix = (): string => `edgeq-test/${rand()}/v1`;

/** A PostgreSQL store in a schema of this test's own, dropped when the test ends. */
export async function pgSchema(t: ExecutionContext): Promise<{ schema: string; open: () => Promise<FleetStore> }> {
  const schema = `t_${rand()}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.end();
  const opened: FleetStore[] = [];
  t.teardown(async () => {
    for (const s of opened) await s.close().catch(() => undefined);
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await c.end();
  });
  return {
    schema,
    open: async () => {
      const s = await openPgStore(PG_URL, { pool: { options: `-c search_path=${schema}` } });
      opened.push(s);
      return s;
    },
  };
}

/** Simulated devices under `prefix`, stopped and their retained status cleared when the test ends. */
export function simFleet(t: ExecutionContext, prefix: string) {
  const devices: SimulatedDevice[] = [];
  const ids = new Set<string>();
  t.teardown(async () => {
    await Promise.all(devices.map((d) => d.stop()));
    await clearRetained(BROKER, prefix, ids);
  });
  return {
    devices,
    async start(deviceId: string, opts: Partial<SimDeviceOptions> = {}): Promise<SimulatedDevice> {
      ids.add(deviceId);
      const d = await SimulatedDevice.start({ broker: BROKER, prefix, deviceId, ...opts });
      devices.push(d);
      return d;
    },
    /** Ids whose retained status must be cleared even without a simulated device (hand-made statuses). */
    track(deviceId: string): void {
      ids.add(deviceId);
    },
  };
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** `node bin/edgeq.js fleet …` as a child process (asynchronously: the simulated devices live in this process). */
export function fleetCli(args: string[], opts: { timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'fleet', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

/** Polls `check` until it returns true (every 25 ms, at most `ms`). */
export async function until(check: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
