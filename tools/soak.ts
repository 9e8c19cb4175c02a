/**
 * `npm run soak`: the device daemon under load and faults for a long while, then the books.
 *
 * One `edgeq run` daemon (child process: endpoint on a Unix socket, capture on, 1 ORT thread), a
 * private mosquitto (persistence on, like a real broker), and in this process the fleet
 * controller (`FleetController` with its SQLite store and a persistent session) and a load
 * generator. For `--minutes` minutes:
 *
 * - steady batch-1 inference requests over the socket (fixture images, one pixel nudged per
 *   request so every input is new and capture keeps writing), counted as served, failed while
 *   the daemon was up, refused while it was down, or cut by a kill or stop;
 * - an `optimize` command from the controller every 30–60 s, each with a new id;
 * - the daemon killed at random moments (mostly SIGKILL, some SIGTERM; some kills aimed into a
 *   running job) and restarted; none in the last --quiet-minutes (20 by default), so its last
 *   incarnation lives long enough for the memory figures;
 * - the broker stopped (SIGTERM: it saves its persistence) and restarted every few minutes.
 *
 * Then the faults stop, the outbox drains, the daemon stops gracefully, and the script counts:
 * requests; commands sent / succeeded / failed by code / pending; reports the device produced
 * (succeeded optimize runs in its store) against the controller's report table — lost =
 * produced − received, duplicates = rows beyond one per command; the daemon's VmRSS and RssAnon
 * (from /proc every 2 s, idle samples only) after warm-up and at the end for the longest-lived
 * and the last incarnation, against a bound; `PRAGMA integrity_check` of both SQLite stores. The
 * run directory (logs, stores, figures.json, rss.json, failures.json) is kept with --keep or
 * when a check fails. Writes the
 * 'soak' section of bench/RESULTS.md and exits 1 if lost > 0, duplicates > 0, the RSS bound is
 * exceeded or a store is not intact.
 *
 *   npm run soak -- --minutes 50 [--seed S] [--json] [--rate N] [--no-write] [--keep]
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, cpSync, createWriteStream, existsSync, symlinkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import { Agent, request } from 'node:http';
import { cpus, platform, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import BetterSqlite3 from 'better-sqlite3';
import { MALLOC_ENV } from '../agent/daemon/malloc-env.js';
import { TERMINAL, type Reply } from '../agent/protocol/index.js';
import { storeFile } from '../agent/state.js';
import { FleetController, type LogEntry } from '../fleet/controller.js';
import { openSqliteStore, type FleetStore } from '../fleet/store/index.js';
import { readNpy } from '../quant/npy.js';
import { rng } from '../quant/random.js';
import { MOSQUITTO_BIN, mosquittoConf, mosquittoVersion } from './mosquitto.js';
import { freePort, portOpen } from './net.js';
import { FMNIST_FIXTURE as FMNIST, prepareFixtureState } from './fixture-state.js';
import { writeSection } from './results-md.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

const USAGE = `npm run soak -- --minutes M [options]

The daemon under steady inference load with capture on, optimize commands from the fleet
controller, broker restarts and daemon kills; then the books (requests, commands, reports lost
or duplicated, RSS growth, SQLite integrity) into the 'soak' section of bench/RESULTS.md.

  --minutes M        length of the loaded run, faults included (default 30; the drain comes after)
  --seed S           seed of the fault and command schedule (default: random; printed)
  --rate N           inference requests per second (default 25)
  --quiet-minutes Q  no daemon kill in the last Q minutes (default max(20, M/3), at most M/2;
                     M/3 below 15 min); the memory figures come from that last incarnation
  --rss-bound-mib B  largest allowed RSS growth of an incarnation after warm-up (default 64)
  --command-every A-B
                     seconds between optimize commands (default 30-60; 15-30 below 15 min)
  --glibc-defaults   start the daemon without the malloc settings systemd/edgeq.service gives it
                     (agent/daemon/malloc-env.ts), to compare
  --json             print the figures as one JSON object instead of the Markdown section
  --no-write         do not touch bench/RESULTS.md (development runs)
  --keep             keep the run directory (logs, stores) even when every check passes
  --help             this text

Exit status 0 when lost = 0, duplicates = 0, RSS within the bound and both stores intact;
1 otherwise (the run directory is then kept); 2 for a bad command line.`;

// ---- options ------------------------------------------------------------------------------------

interface Options {
  minutes: number;
  seed: number;
  seedGiven: boolean;
  rate: number;
  quietMinutes: number;
  rssBoundMiB: number;
  commandEveryS?: [number, number];
  json: boolean;
  write: boolean;
  keep: boolean;
  glibcDefaults: boolean;
  argv: string[];
}

function usageError(message: string): never {
  process.stderr.write(`soak: error: ${message}\n\n${USAGE}\n`);
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const num = (name: string, v: string | undefined, min: number, max: number): number => {
    const x = Number(v);
    if (v === undefined || v.trim() === '' || !Number.isFinite(x) || x < min || x > max) usageError(`${name} needs a number from ${min} to ${max}, got ${JSON.stringify(v ?? null)}`);
    return x;
  };
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const o: Partial<Options> & { argv: string[] } = { argv };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--minutes':
        o.minutes = num('--minutes', value(), 0.5, 24 * 60);
        break;
      case '--seed':
        o.seed = Math.trunc(num('--seed', value(), 0, 2 ** 32 - 1));
        o.seedGiven = true;
        break;
      case '--rate':
        o.rate = num('--rate', value(), 1, 1000);
        break;
      case '--quiet-minutes':
        o.quietMinutes = num('--quiet-minutes', value(), 0, 24 * 60);
        break;
      case '--rss-bound-mib':
        o.rssBoundMiB = num('--rss-bound-mib', value(), 1, 1 << 20);
        break;
      case '--command-every': {
        const v = value() ?? '';
        const m = /^(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)$/.exec(v);
        if (!m || Number(m[1]) < 1 || Number(m[2]) < Number(m[1])) usageError(`--command-every needs MIN-MAX seconds such as 30-60, got ${JSON.stringify(v)}`);
        o.commandEveryS = [Number(m[1]), Number(m[2])];
        break;
      }
      case '--json':
        o.json = true;
        break;
      case '--no-write':
        o.write = false;
        break;
      case '--keep':
        o.keep = true;
        break;
      case '--glibc-defaults':
        o.glibcDefaults = true;
        break;
      default:
        usageError(`unknown argument ${JSON.stringify(a)}`);
    }
  }
  const minutes = o.minutes ?? 30;
  // The last incarnation needs its warm-up (5 min and 3 jobs in a long run) and then time to measure.
  const quietMinutes = o.quietMinutes ?? (minutes >= 15 ? Math.min(minutes / 2, Math.max(20, minutes / 3)) : minutes / 3);
  if (quietMinutes >= minutes) usageError(`--quiet-minutes (${quietMinutes}) must be below --minutes (${minutes})`);
  return {
    minutes,
    seed: o.seed ?? randomBytes(4).readUInt32BE(0),
    seedGiven: o.seedGiven ?? false,
    rate: o.rate ?? 25,
    quietMinutes,
    rssBoundMiB: o.rssBoundMiB ?? 64,
    ...(o.commandEveryS ? { commandEveryS: o.commandEveryS } : {}),
    json: o.json ?? false,
    write: o.write ?? true,
    keep: o.keep ?? false,
    glibcDefaults: o.glibcDefaults ?? false,
    argv,
  };
}

// ---- small helpers ------------------------------------------------------------------------------

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));
const now = () => performance.now();
const median = (xs: number[]) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const pctl = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] : NaN);
const inc = (m: Record<string, number>, k: string, by = 1) => {
  m[k] = (m[k] ?? 0) + by;
};
const fmtCounts = (m: Record<string, number>) => {
  const e = Object.entries(m).sort((a, b) => b[1] - a[1]);
  return e.length ? e.map(([k, v]) => `${k} ×${v}`).join(', ') : 'none';
};
const mib = (kib: number) => (Number.isFinite(kib) ? `${(kib / 1024).toFixed(1)} MiB` : '—');
const secs = (ms: number) => `${(ms / 1000).toFixed(0)} s`;

function log(line: string): void {
  process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

/** The commit the build came from, and whether the tree had changes. */
function gitDescribe(): string {
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    return `commit ${head}${dirty ? ' with uncommitted changes' : ''}`;
  } catch {
    return 'unknown commit';
  }
}

/**
 * VmRSS, RssAnon and VmHWM of a process, KiB (undefined once it is gone). RssAnon is the heap
 * part of VmRSS: what a leak grows, and what the kernel cannot reclaim without swap (file pages
 * such as the node binary and libonnxruntime are dropped under memory pressure and fault back in).
 */
function memOf(pid: number): { rss: number; anon: number; hwm: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN);
    const m = { rss: kb('VmRSS'), anon: kb('RssAnon'), hwm: kb('VmHWM') };
    return Number.isFinite(m.rss) ? m : undefined;
  } catch {
    return undefined;
  }
}

/** The kernel's total time (µs) some or all tasks stalled on memory (PSI), or undefined without PSI. */
function memoryPressure(): { some: number; full: number } | undefined {
  try {
    const s = readFileSync('/proc/pressure/memory', 'utf8');
    const some = /some .*total=(\d+)/.exec(s);
    const full = /full .*total=(\d+)/.exec(s);
    return some && full ? { some: Number(some[1]), full: Number(full[1]) } : undefined;
  } catch {
    return undefined;
  }
}

// ---- the broker ---------------------------------------------------------------------------------

/** A private mosquitto on a free loopback port with persistence, as test/helpers/mosquitto.ts starts it. */
class Broker {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  restarts = 0;
  readonly url: string;
  private readonly conf: string;

  constructor(readonly dir: string, readonly port: number) {
    this.url = `mqtt://127.0.0.1:${port}`;
    this.conf = join(dir, 'mosquitto.conf');
    writeFileSync(this.conf, mosquittoConf({ port, dir, logTypes: ['error', 'warning', 'notice', 'information'] }));
  }

  running(): boolean {
    return this.child !== undefined;
  }

  async start(): Promise<void> {
    if (this.child) return;
    const c = spawn(MOSQUITTO_BIN, ['-c', this.conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    this.child = c;
    this.exited = new Promise((resolve) =>
      c.once('exit', () => {
        if (this.child === c) this.child = undefined;
        resolve();
      }),
    );
    for (let i = 0; i < 200; i++) {
      if (await portOpen(this.port, 200)) return;
      if (this.child !== c) throw new Error(`mosquitto exited at start: ${stderr}`);
      await sleep(50);
    }
    throw new Error(`mosquitto did not listen on ${this.port}: ${stderr}`);
  }

  /** SIGTERM (mosquitto saves its persistence file) and wait for the exit. */
  async stop(): Promise<void> {
    if (!this.child) return;
    this.child.kill('SIGTERM');
    await this.exited;
  }

  kill(): void {
    this.child?.kill('SIGKILL');
  }
}

// ---- the daemon ---------------------------------------------------------------------------------

type EndKind = 'SIGKILL' | 'SIGTERM' | 'SIGTERM, then SIGKILL' | 'crash' | 'final stop';

interface Incarnation {
  n: number;
  pid: number;
  spawnedAt: number;
  upAt?: number;
  endedAt?: number;
  end?: EndKind;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
  /** [ms since the soak's start, VmRSS KiB, 1 if a job was running else 0] */
  rss: Array<[number, number, 0 | 1]>;
  /** The same for RssAnon. */
  anon: Array<[number, number, 0 | 1]>;
  hwmKiB: number;
  jobsDone: number;
  firstJobDoneAt?: number;
  /** When each of its jobs ended (ms since the soak's start). */
  jobEnds: number[];
  /** The job running when the kill was sent, if any. */
  killedDuringJob?: string;
  /** SIGTERM: how long the graceful stop took. */
  stopMs?: number;
}

/** Starts, kills and restarts `edgeq run`; keeps its log and the facts of each incarnation. */
class DaemonRunner {
  readonly incarnations: Incarnation[] = [];
  /** Bumped at every signal and exit: a request that saw it change was cut by a fault. */
  epoch = 0;
  /** The endpoint of the current incarnation is serving. */
  up = false;
  /** The job the current incarnation runs (from its log). */
  job: string | undefined;
  /** How long finished jobs took, ms (from the log lines' arrival). */
  readonly jobDurations: number[] = [];
  private jobStartedAt = 0;
  readonly errors: Record<string, number> = {};
  readonly warnings: Record<string, number> = {};
  readonly events: Record<string, number> = {};
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private expectingExit = false;
  private supervising = true;
  private readonly out: WriteStream;

  /** `malloc`: the MALLOC_* variables to start it with (unset ones are removed from the environment). */
  constructor(private readonly cli: string, private readonly config: string, logFile: string, private readonly t0: number, private readonly malloc: Record<string, string | undefined>) {
    this.out = createWriteStream(logFile, { flags: 'a' });
  }

  get current(): Incarnation | undefined {
    const c = this.incarnations.at(-1);
    return c && c.endedAt === undefined ? c : undefined;
  }

  /** Spawns an incarnation and waits until its endpoint serves (or it exits: then it is restarted like systemd would). */
  async start(): Promise<void> {
    const child = spawn(process.execPath, [this.cli, 'run', '--config', this.config], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, EDGEQ_CONFIG: undefined, ...this.malloc } });
    const me: Incarnation = { n: this.incarnations.length + 1, pid: child.pid ?? -1, spawnedAt: now() - this.t0, rss: [], anon: [], hwmKiB: 0, jobsDone: 0, jobEnds: [] };
    this.incarnations.push(me);
    this.child = child;
    this.expectingExit = false;
    this.job = undefined;
    this.out.write(`# ---- incarnation ${me.n}, pid ${me.pid}, at +${secs(me.spawnedAt)}\n`);
    let pending = '';
    let resolveUp: () => void = () => {};
    const upOrExit = new Promise<void>((r) => (resolveUp = r));
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      this.out.write(chunk);
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        let e: Record<string, unknown>;
        try {
          e = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        this.onLog(me, e, resolveUp);
      }
    });
    this.exited = new Promise<void>((resolve) =>
      child.once('exit', (code, signal) => {
        me.endedAt ??= now() - this.t0;
        me.exit = { code, signal };
        this.epoch++;
        this.up = false;
        this.job = undefined;
        if (this.child === child) this.child = undefined;
        if (!this.expectingExit) {
          me.end = 'crash';
          log(`daemon incarnation ${me.n} exited on its own (code ${code}, signal ${signal}); restarting`);
          if (this.supervising) setTimeout(() => void this.start().catch((e: Error) => log(`restart failed: ${e.message}`)), 1000);
        }
        resolveUp();
        resolve();
      }),
    );
    const timer = setTimeout(resolveUp, 120_000);
    await upOrExit;
    clearTimeout(timer);
  }

  private onLog(me: Incarnation, e: Record<string, unknown>, resolveUp: () => void): void {
    const event = String(e.event ?? '');
    const level = String(e.level ?? '');
    if (level === 'error' || level === 'fatal') inc(this.errors, event);
    else if (level === 'warn') inc(this.warnings, event);
    if (event.startsWith('job-') || event === 'crash' || event === 'stale-will' || event === 'command-repeated' || event === 'job-interrupted') inc(this.events, event);
    if (event === 'endpoint-started' && this.incarnations.at(-1) === me && me.endedAt === undefined) {
      me.upAt = now() - this.t0;
      if (!this.expectingExit) this.up = true;
      resolveUp();
    } else if (event === 'job-started') {
      this.job = String(e.cmdId);
      this.jobStartedAt = now();
    } else if (event === 'job-succeeded' || event === 'job-failed' || event === 'job-cancelled' || event === 'job-requeued') {
      this.job = undefined;
      if (event !== 'job-requeued') {
        if (this.jobStartedAt) this.jobDurations.push(now() - this.jobStartedAt);
        me.jobsDone++;
        me.firstJobDoneAt ??= now() - this.t0;
        me.jobEnds.push(now() - this.t0);
      }
    }
  }

  /** Samples the current incarnation's memory. */
  sample(): void {
    const c = this.current;
    if (!c || !this.child) return;
    const m = memOf(c.pid);
    if (!m) return;
    const t = now() - this.t0;
    const job = this.job !== undefined ? 1 : 0;
    c.rss.push([t, m.rss, job]);
    if (Number.isFinite(m.anon)) c.anon.push([t, m.anon, job]);
    c.hwmKiB = Math.max(c.hwmKiB, m.hwm);
  }

  /** Kills the current incarnation; SIGTERM waits for the graceful stop (SIGKILL after `termGraceMs`). */
  async kill(signal: 'SIGKILL' | 'SIGTERM', termGraceMs: number, end?: EndKind): Promise<void> {
    const c = this.current;
    const child = this.child;
    if (!c || !child) return;
    this.sample();
    this.expectingExit = true;
    this.epoch++;
    this.up = false;
    c.killedDuringJob = this.job;
    const t = now();
    child.kill(signal);
    if (signal === 'SIGTERM') {
      const done = await Promise.race([this.exited.then(() => true), sleep(termGraceMs).then(() => false)]);
      if (!done) {
        child.kill('SIGKILL');
        await this.exited;
        c.end = 'SIGTERM, then SIGKILL';
      } else c.end = end ?? 'SIGTERM';
      c.stopMs = now() - t;
    } else {
      await this.exited;
      c.end = end ?? 'SIGKILL';
    }
    c.endedAt = now() - this.t0;
  }

  /** No more restarts after an exit (the end of the run). */
  stopSupervising(): void {
    this.supervising = false;
  }

  /** SIGKILL whatever runs (cleanup after an error). */
  forceKill(): void {
    this.supervising = false;
    this.expectingExit = true;
    this.child?.kill('SIGKILL');
  }

  async close(): Promise<void> {
    await this.exited;
    await new Promise<void>((r) => this.out.end(r));
  }
}

// ---- the load -----------------------------------------------------------------------------------

interface LoadStats {
  sent: number;
  served: number;
  /** Non-200 answers and transport errors while the daemon was up and stayed up, by code. */
  failedWhileUp: Record<string, number>;
  /** Connection refused / no socket while the daemon was down. */
  refusedWhileDown: number;
  /** Requests a kill or a graceful stop cut (reset, or 503 E_UNAVAILABLE while stopping), by code. */
  cutByFault: Record<string, number>;
  latencyMs: number[];
  /** Round trips of requests that started while an optimize job ran in the daemon. */
  latencyDuringJobMs: number[];
  /** Size of a request body (they all have the same shape). */
  bodyBytes: number;
  /** Every failure, with its time and class (written to failures.json in the run directory). */
  failures: Array<{ time: string; class: 'while up' | 'refused while down' | 'cut by fault'; code: string }>;
}

function post(agent: Agent, socketPath: string, body: string): Promise<{ status: number; code?: string; ms: number }> {
  return new Promise((resolve, reject) => {
    const t0 = now();
    const req = request(
      { socketPath, agent, method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('error', reject);
        res.on('end', () => {
          const ms = now() - t0;
          if (res.statusCode === 200) return resolve({ status: 200, ms });
          let code = `HTTP ${res.statusCode}`;
          try {
            code = String((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error: { code: string } }).error.code);
          } catch {
            // not our JSON error
          }
          resolve({ status: res.statusCode ?? 0, code, ms });
        });
      },
    );
    req.setTimeout(30_000, () => req.destroy(Object.assign(new Error('client timeout'), { code: 'E_CLIENT_TIMEOUT' })));
    req.on('error', reject);
    req.end(body);
  });
}

/** Paced requests from `workers` loops until `stop()` says so. */
async function runLoad(socketPath: string, rate: number, daemon: DaemonRunner, stop: () => boolean, stats: LoadStats): Promise<void> {
  const x = readNpy(FMNIST.test).data as Float32Array;
  const images = x.length / 784;
  const workers = 2;
  const agent = new Agent({ keepAlive: true, maxSockets: workers });
  const interval = 1000 / rate;
  let next = now();
  let n = 0;
  const worker = async () => {
    while (!stop()) {
      // One global schedule; after a stall it restarts rather than bursting to catch up.
      const due = next;
      next = Math.max(next + interval, now() - 1000);
      if (due > now()) await sleep(due - now());
      if (stop()) break;
      const k = n++;
      const data = Array.from(x.subarray((k % images) * 784, (k % images + 1) * 784));
      data[k % 784] += 1e-6 * (1 + Math.floor(k / images)); // a new input every time: capture keeps writing
      const body = JSON.stringify({ inputs: { input: { shape: [1, 1, 28, 28], data } } });
      stats.bodyBytes ||= Buffer.byteLength(body);
      const epoch = daemon.epoch;
      const up = daemon.up;
      const duringJob = daemon.job !== undefined;
      stats.sent++;
      const fault = () => !up || daemon.epoch !== epoch;
      try {
        const r = await post(agent, socketPath, body);
        if (r.status === 200) {
          stats.served++;
          if (!fault()) (duringJob ? stats.latencyDuringJobMs : stats.latencyMs).push(r.ms);
        } else {
          const code = r.code ?? `HTTP ${r.status}`;
          const cls = fault() ? 'cut by fault' : 'while up';
          inc(cls === 'while up' ? stats.failedWhileUp : stats.cutByFault, code);
          stats.failures.push({ time: new Date().toISOString(), class: cls, code });
        }
      } catch (e) {
        const code = String((e as NodeJS.ErrnoException).code ?? (e as Error).message);
        const cls = !fault() ? 'while up' : code === 'ECONNREFUSED' || code === 'ENOENT' ? 'refused while down' : 'cut by fault';
        if (cls === 'while up') inc(stats.failedWhileUp, code);
        else if (cls === 'refused while down') stats.refusedWhileDown++;
        else inc(stats.cutByFault, code);
        stats.failures.push({ time: new Date().toISOString(), class: cls, code });
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
  agent.destroy();
}

// ---- the books ----------------------------------------------------------------------------------

interface RssFigure {
  n: number;
  measure: 'VmRSS' | 'RssAnon';
  lifeS: number;
  jobs: number;
  /** Idle RSS of the fresh process (10 s after the endpoint came up, before any job ended). */
  freshKiB: number;
  /** Idle RSS (no job running) after warm-up, in the middle of what is left, and at the end. */
  startKiB: number;
  midKiB: number;
  endKiB: number;
  growthKiB: number;
  /** end − mid: about half the growth for a steady leak, about 0 once RSS has plateaued. */
  secondHalfKiB: number;
  /** The highest sample while an optimize job ran, and VmHWM. */
  jobPeakKiB: number;
  /** Median over jobs of (highest sample during the job − the idle sample before it). */
  jobLiftKiB: number;
  hwmKiB: number;
  /** Least-squares slope of the idle samples after warm-up. */
  slopeMiBPerHour: number | null;
  withinBound: boolean;
}

/**
 * RSS figures of an incarnation from its idle samples (no job running at the sample nor at the
 * one before: an optimize job lifts RSS by tens of MiB while it runs and gives it back after).
 * Start: median over the window after warm-up (warm-up: `warmupMs` after the endpoint came up
 * and 5 s after the incarnation's `warmupJobs`-th job ended, whichever is later: glibc's malloc
 * keeps part of what a job frees, so RSS climbs over the first jobs toward a job's high-water
 * mark); end: median over the last window before `untilMs`; mid: median over the window
 * halfway between.
 */
function rssFigure(c: Incarnation, measure: RssFigure['measure'], warmupMs: number, warmupJobs: number, windowMs: number, untilMs: number, boundKiB: number): RssFigure | undefined {
  if (c.upAt === undefined || c.jobEnds.length < warmupJobs) return undefined;
  const warm = Math.max(c.upAt + warmupMs, (warmupJobs > 0 ? c.jobEnds[warmupJobs - 1] : 0) + 5000);
  const samples = (measure === 'VmRSS' ? c.rss : c.anon).filter(([t]) => t <= untilMs);
  const idle = samples.filter((x, i) => x[2] === 0 && (i === 0 || samples[i - 1][2] === 0));
  const last = samples.at(-1)?.[0];
  if (last === undefined || last - warm < 3 * windowMs) return undefined;
  const around = (from: number, to: number) => {
    const xs = idle.filter(([t]) => t >= from && t <= to).map(([, r]) => r);
    // No idle sample in the window (a job ran throughout): the lowest sample is the nearest to idle.
    return xs.length ? median(xs) : Math.min(...samples.filter(([t]) => t >= from && t <= to).map(([, r]) => r));
  };
  const start = around(warm, warm + windowMs);
  const midT = (warm + windowMs / 2 + (last - windowMs / 2)) / 2;
  const mid = around(midT - windowMs / 2, midT + windowMs / 2);
  const end = around(last - windowMs, last);
  const after = idle.filter(([t]) => t >= warm);
  let slope: number | null = null;
  if (after.length >= 10) {
    const mt = after.reduce((s, [t]) => s + t, 0) / after.length;
    const mr = after.reduce((s, [, r]) => s + r, 0) / after.length;
    const num = after.reduce((s, [t, r]) => s + (t - mt) * (r - mr), 0);
    const den = after.reduce((s, [t]) => s + (t - mt) ** 2, 0);
    slope = den > 0 ? ((num / den) * 3_600_000) / 1024 : null;
  }
  const jobPeak = Math.max(0, ...samples.filter(([, , j]) => j === 1).map(([, r]) => r));
  const lifts: number[] = [];
  let before: number | undefined; // the last sample with no job running
  let peak = 0;
  for (const [, r, j] of samples) {
    if (j === 1) {
      peak = Math.max(peak, r);
      continue;
    }
    if (peak > 0 && before !== undefined) lifts.push(peak - before);
    peak = 0;
    before = r;
  }
  const fresh = samples.find(([t, , j]) => t >= c.upAt! + 10_000 && j === 0 && (c.firstJobDoneAt === undefined || t < c.firstJobDoneAt))?.[1] ?? NaN;
  return {
    n: c.n,
    measure,
    freshKiB: fresh,
    lifeS: ((c.endedAt ?? untilMs) - c.upAt) / 1000,
    jobs: c.jobsDone,
    startKiB: start,
    midKiB: mid,
    endKiB: end,
    growthKiB: end - start,
    secondHalfKiB: end - mid,
    jobPeakKiB: jobPeak,
    jobLiftKiB: median(lifts),
    hwmKiB: c.hwmKiB,
    slopeMiBPerHour: slope,
    withinBound: end - start <= boundKiB,
  };
}

function integrity(path: string): string {
  const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
  try {
    const rows = db.pragma('integrity_check') as Array<{ integrity_check: string }>;
    return rows.map((r) => r.integrity_check).join('; ');
  } finally {
    db.close();
  }
}

// ---- the run ------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  if (!existsSync(MOSQUITTO_BIN)) throw new Error(`no mosquitto at ${MOSQUITTO_BIN} (apt-get install mosquitto, or set EDGEQ_MOSQUITTO)`);
  if (!existsSync(join(ROOT, 'dist/agent/cli.js'))) throw new Error('dist/ is missing: run npm run build first');
  const rnd = rng(o.seed); // a seed replays the same schedule of faults and commands
  const U = (a: number, b: number) => a + (b - a) * rnd();
  const long = o.minutes >= 15;
  const cfg = {
    killEveryS: long ? [50, 150] : [15, 40],
    downS: [0.5, 3],
    sigkillShare: 0.75,
    aimedShare: 0.35,
    brokerEveryS: long ? [120, 240] : [30, 60],
    brokerDownS: [1, 5],
    commandEveryS: o.commandEveryS ?? (long ? [30, 60] : [15, 30]),
    warmupMs: long ? 300_000 : 15_000,
    warmupJobs: long ? 3 : 2,
    windowMs: long ? 60_000 : 10_000,
    captureRate: 0.1,
    captureMax: 600,
    samples: 200,
    termGraceMs: 10_000 + 5000 + 3000,
    drainTimeoutMs: 15 * 60_000,
  };
  const durationMs = o.minutes * 60_000;
  const faultsUntilMs = durationMs - o.quietMinutes * 60_000;
  const brokerUntilMs = durationMs - Math.min(60_000, durationMs / 10);
  const boundKiB = o.rssBoundMiB * 1024;

  const dir = mkdtempSync(join(tmpdir(), 'edgeq-soak-'));
  const tag = o.seed.toString(16).padStart(8, '0');
  const deviceId = `soak-${tag}`;
  const prefix = `edgeq-soak/${tag}/v1`;
  log(`seed ${o.seed}; ${o.minutes} min (no daemon kill in the last ${o.quietMinutes.toFixed(1)} min); run directory ${dir}`);

  // The daemon runs from a copy of the build: the working tree (and dist/) may change during a long run.
  const app = join(dir, 'app');
  for (const d of ['dist/agent', 'dist/quant', 'dist/deploy', 'dist/fleet', 'bin']) cpSync(join(ROOT, d), join(app, d), { recursive: true });
  copyFileSync(join(ROOT, 'package.json'), join(app, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'));
  const cli = join(app, 'bin/edgeq.js');
  const built = gitDescribe();

  // broker
  const brokerDir = join(dir, 'broker');
  mkdirSync(brokerDir);
  const broker = new Broker(brokerDir, await freePort());
  await broker.start();

  // device state: the fixture model and labelled samples, as the daemon tests start from
  const stateDir = join(dir, 'state');
  mkdirSync(stateDir, { recursive: true });
  await prepareFixtureState(stateDir, dir, cfg.samples, 'soak');
  const socketPath = join(dir, 'edgeq.sock');
  const config = join(dir, 'config.json');
  writeFileSync(
    config,
    JSON.stringify(
      {
        deviceId,
        prefix,
        stateDir,
        threads: 1,
        broker: { url: broker.url, sessionExpiry: 3600, keepalive: 10, reconnect: { baseMs: 200, capMs: 2000 } },
        serve: { socket: socketPath },
        capture: { enabled: true, policies: { fmnist: { enabled: true, rate: cfg.captureRate, maxSamples: cfg.captureMax } } },
        shutdownTimeoutMs: 10_000,
      },
      null,
      2,
    ),
  );

  // controller
  const fleetDb = join(dir, 'fleet.db');
  const fleetStore: FleetStore = await openSqliteStore(fleetDb);
  const ctlLog = createWriteStream(join(dir, 'controller.log'));
  const ctlCounts: Record<string, number> = {};
  const controller = await FleetController.connect({
    broker: broker.url,
    prefix,
    store: fleetStore,
    clientId: `edgeq-soak-controller-${tag}`,
    persistent: true,
    sessionExpiry: 3600,
    log: (e: LogEntry) => {
      if (e.level !== 'debug') inc(ctlCounts, `${e.level} ${e.event}`);
      ctlLog.write(JSON.stringify({ time: new Date().toISOString(), ...e }) + '\n');
    },
  });
  let controllerFailure: Error | undefined;
  controller.on('error', (e) => (controllerFailure = e));
  const invalid: string[] = [];
  controller.on('invalid', (t, e) => invalid.push(`${t}: ${e}`));
  const terminal = new Map<string, Reply['state']>();
  const reportEvents = { delivered: 0, stored: 0, redelivered: 0 };
  controller.on('reply', (_id, r) => {
    if (TERMINAL.has(r.state) && !terminal.has(r.cmdId)) terminal.set(r.cmdId, r.state);
  });
  controller.on('report', (_id, _r, stored) => {
    reportEvents.delivered++;
    if (stored) reportEvents.stored++;
    else reportEvents.redelivered++;
  });
  await controller.subscribe({ status: true, reply: 'fleet', report: 'fleet' });

  const t0 = now();
  const at = () => now() - t0;
  const psi0 = memoryPressure();
  const stalls: Array<{ at: number; lateMs: number }> = [];
  // As systemd/edgeq.service starts it, unless --glibc-defaults.
  const malloc = o.glibcDefaults ? Object.fromEntries(Object.keys(MALLOC_ENV).map((k) => [k, undefined])) : { ...MALLOC_ENV };
  const daemon = new DaemonRunner(cli, config, join(dir, 'daemon.log'), t0, malloc);
  const load: LoadStats = { sent: 0, served: 0, failedWhileUp: {}, refusedWhileDown: 0, cutByFault: {}, latencyMs: [], latencyDuringJobMs: [], bodyBytes: 0, failures: [] };
  const sent: Array<{ id: string; at: number; method: string; acked: boolean; error?: string }> = [];
  const faults = { sigkill: 0, sigterm: 0, sigtermForced: 0, aimed: 0, duringJob: 0, downMs: 0, brokerRestarts: 0, brokerDownMs: 0 };
  let cleanedUp = false;
  const cleanup = () => {
    if (cleanedUp) return;
    cleanedUp = true;
    daemon.forceKill();
    broker.kill();
  };
  for (const signal of ['SIGINT', 'SIGTERM'] as const)
    process.once(signal, () => {
      log(`interrupted (${signal}); run directory kept: ${dir}`);
      cleanup();
      process.exit(signal === 'SIGINT' ? 130 : 143);
    });

  let ok = false;
  try {
    await daemon.start();
    log(`daemon up (pid ${daemon.current?.pid}); load ${o.rate} req/s, optimize every ${cfg.commandEveryS.join('–')} s, kills every ${cfg.killEveryS.join('–')} s, broker restarts every ${cfg.brokerEveryS.join('–')} s`);
    let loadOn = true;
    const loadDone = runLoad(socketPath, o.rate, daemon, () => !loadOn, load);

    let lastTick = at();
    const sampler = setInterval(() => {
      const t = at();
      // Late by far more than the interval: this process (and, in practice, the whole machine) stalled.
      if (t - lastTick > 10_000) stalls.push({ at: Math.round(lastTick), lateMs: Math.round(t - lastTick - 2000) });
      lastTick = t;
      daemon.sample();
    }, 2000);

    // optimize commands
    const commands = (async () => {
      const methods = ['histogram', 'minmax', 'percentile'];
      let k = 0;
      let nextAt = 10_000;
      while (at() < durationMs) {
        if (at() < nextAt) {
          await sleep(Math.min(1000, nextAt - at()));
          continue;
        }
        const id = `soak-${tag}-opt-${String(++k).padStart(4, '0')}`;
        const method = methods[(k - 1) % methods.length];
        const s: (typeof sent)[number] = { id, at: at(), method, acked: false };
        sent.push(s);
        controller.send([deviceId], { id, type: 'optimize', args: { model: 'fmnist', method, runs: 50 } }, 900).then(
          () => (s.acked = true),
          (e: Error) => (s.error = e.message),
        );
        nextAt = at() + U(cfg.commandEveryS[0], cfg.commandEveryS[1]) * 1000;
      }
    })();

    // daemon kills
    const kills = (async () => {
      for (;;) {
        const wait = U(cfg.killEveryS[0], cfg.killEveryS[1]) * 1000;
        const aimed = rnd() < cfg.aimedShare;
        const sig = rnd() < cfg.sigkillShare ? 'SIGKILL' : 'SIGTERM';
        const into = U(0.05, 0.9) * (median(daemon.jobDurations.slice(-10)) || 3000);
        const down = U(cfg.downS[0], cfg.downS[1]) * 1000;
        const until = at() + wait;
        while (at() < until && at() < faultsUntilMs) await sleep(Math.min(500, until - at()));
        if (at() >= faultsUntilMs) return;
        if (aimed) {
          // Aimed into a running job: wait (at most 90 s) for one, then kill a random moment into it.
          const limit = at() + 90_000;
          while (!daemon.job && at() < limit && at() < faultsUntilMs) await sleep(200);
          if (at() >= faultsUntilMs) return;
          if (daemon.job) {
            faults.aimed++;
            await sleep(into);
          }
        }
        if (!daemon.current || daemon.current.upAt === undefined) continue;
        const wasJob = daemon.job;
        const t = at();
        await daemon.kill(sig, cfg.termGraceMs);
        const c = daemon.incarnations.at(-1)!;
        if (wasJob) faults.duringJob++;
        if (sig === 'SIGKILL') faults.sigkill++;
        else if (c.end === 'SIGTERM') faults.sigterm++;
        else faults.sigtermForced++;
        log(`killed incarnation ${c.n} with ${sig}${wasJob ? ` during job ${wasJob}` : ''}${c.stopMs !== undefined ? ` (stopped in ${(c.stopMs / 1000).toFixed(1)} s)` : ''}; restart in ${(down / 1000).toFixed(1)} s`);
        await sleep(down);
        await daemon.start();
        faults.downMs += at() - t;
      }
    })();

    // broker restarts
    const brokerFaults = (async () => {
      for (;;) {
        const until = at() + U(cfg.brokerEveryS[0], cfg.brokerEveryS[1]) * 1000;
        const down = U(cfg.brokerDownS[0], cfg.brokerDownS[1]) * 1000;
        while (at() < until && at() < brokerUntilMs) await sleep(Math.min(500, until - at()));
        if (at() >= brokerUntilMs) return;
        const t = at();
        await broker.stop();
        await sleep(down);
        await broker.start();
        faults.brokerRestarts++;
        faults.brokerDownMs += at() - t;
        log(`broker restarted (down ${((at() - t) / 1000).toFixed(1)} s)`);
      }
    })();

    // progress
    const progress = setInterval(() => {
      const c = daemon.current;
      const rss = c?.rss.at(-1)?.[1];
      log(
        `+${secs(at())}: served ${load.served}, failed while up ${Object.values(load.failedWhileUp).reduce((a, b) => a + b, 0)}, refused while down ${load.refusedWhileDown}; ` +
          `commands ${sent.length} (terminal ${[...terminal.keys()].filter((k) => k.startsWith(`soak-${tag}`)).length}); kills ${faults.sigkill + faults.sigterm + faults.sigtermForced}; broker restarts ${faults.brokerRestarts}; ` +
          `incarnation ${c?.n ?? '—'} RSS ${rss !== undefined ? mib(rss) : '—'}`,
      );
    }, 60_000);

    while (at() < durationMs) await sleep(500);
    const endMs = at();
    loadOn = false;
    await Promise.all([loadDone, commands, kills, brokerFaults]);
    clearInterval(progress);
    log(`load stopped at +${secs(endMs)}; draining (every command answered, the device's outbox and queue empty)`);
    if (!broker.running()) await broker.start();

    // drain
    const devDb = storeFile(stateDir);
    const deviceBacklog = (): { outbox: number; jobs: number } | undefined => {
      try {
        const db = new BetterSqlite3(devDb, { readonly: true, fileMustExist: true, timeout: 5000 });
        try {
          return {
            outbox: (db.prepare('SELECT count(*) AS n FROM outbox').get() as { n: number }).n,
            jobs: (db.prepare('SELECT count(*) AS n FROM jobs').get() as { n: number }).n,
          };
        } finally {
          db.close();
        }
      } catch {
        return undefined;
      }
    };
    const drainStart = at();
    let drained = false;
    while (at() - drainStart < cfg.drainTimeoutMs) {
      const b = deviceBacklog();
      const unanswered = sent.filter((s) => !terminal.has(s.id)).length;
      if (b && b.outbox === 0 && b.jobs === 0 && unanswered === 0) {
        drained = true;
        break;
      }
      await sleep(2000);
    }
    await sleep(5000); // a late redelivery would land now
    const drainMs = at() - drainStart;
    log(drained ? `drained in ${secs(drainMs)}` : `NOT drained after ${secs(drainMs)}`);
    daemon.sample();
    clearInterval(sampler);

    // graceful stop of the last incarnation; then close the controller and the broker
    daemon.stopSupervising();
    await daemon.kill('SIGTERM', cfg.termGraceMs, 'final stop');
    await daemon.close();
    await controller.close();
    await fleetStore.close();
    await new Promise<void>((r) => ctlLog.end(r));
    await broker.stop();

    // ---- the books ----
    const dev = new BetterSqlite3(devDb, { readonly: true, fileMustExist: true });
    const runs = dev.prepare("SELECT id, state, result, error_code FROM runs WHERE kind = 'optimize'").all() as Array<{ id: string; state: string; result: string | null; error_code: string | null }>;
    const runStates: Record<string, number> = {};
    for (const r of runs) inc(runStates, r.state);
    const produced = new Set(runs.filter((r) => r.state === 'succeeded' && r.result).map((r) => (JSON.parse(r.result!) as { id: string }).id));
    const answers = dev.prepare('SELECT id, reply FROM processed_commands').all() as Array<{ id: string; reply: string }>;
    const reportCmd = new Map<string, string>();
    for (const a of answers) {
      const r = JSON.parse(a.reply) as Reply;
      const reportId = (r.result as { reportId?: unknown } | undefined)?.reportId;
      if (r.state === 'succeeded' && typeof reportId === 'string') reportCmd.set(reportId, a.id);
    }
    const outboxLeft = (dev.prepare('SELECT count(*) AS n FROM outbox').get() as { n: number }).n;
    const jobsLeft = (dev.prepare('SELECT count(*) AS n FROM jobs').get() as { n: number }).n;
    const capture = dev.prepare("SELECT * FROM capture_stats WHERE model = 'fmnist'").get() as Record<string, number> | undefined;
    const samplesKept = (dev.prepare("SELECT count(*) AS n FROM samples WHERE model = 'fmnist'").get() as { n: number }).n;
    const versions = dev.prepare("SELECT kind, count(*) AS n FROM model_versions WHERE model = 'fmnist' GROUP BY kind").all() as Array<{ kind: string; n: number }>;
    const active = dev.prepare("SELECT v.version, v.kind FROM models m JOIN model_versions v ON v.model = m.name AND v.version = m.active_version WHERE m.name = 'fmnist'").get() as { version: number; kind: string } | undefined;
    dev.close();

    const ctl = new BetterSqlite3(fleetDb, { readonly: true, fileMustExist: true });
    const reportRows = ctl.prepare('SELECT id FROM reports WHERE device_id = ?').all(deviceId) as Array<{ id: string }>;
    const replyRows = ctl.prepare('SELECT cmd_id, state, body FROM replies WHERE device_id = ?').all(deviceId) as Array<{ cmd_id: string; state: string; body: string }>;
    ctl.close();

    const received = new Set(reportRows.map((r) => r.id));
    const lostIds = [...produced].filter((id) => !received.has(id));
    const unknownIds = [...received].filter((id) => !produced.has(id));
    const identities = new Set(reportRows.map((r) => reportCmd.get(r.id) ?? `report:${r.id}`));
    const duplicates = reportRows.length - identities.size;
    const producedNotQueued = [...produced].filter((id) => !reportCmd.has(id));

    // commands, from the controller's reply table
    const byCmd = new Map<string, { states: Set<string>; terminal: Reply[] }>();
    for (const r of replyRows) {
      const e = byCmd.get(r.cmd_id) ?? { states: new Set(), terminal: [] };
      e.states.add(r.state);
      if (TERMINAL.has(r.state as Reply['state'])) e.terminal.push(JSON.parse(r.body) as Reply);
      byCmd.set(r.cmd_id, e);
    }
    const cmdFigures = { sent: sent.length, publishAcked: sent.filter((s) => s.acked).length, succeeded: 0, failed: {} as Record<string, number>, cancelled: 0, rejected: {} as Record<string, number>, pending: 0, conflicting: 0 };
    for (const s of sent) {
      const e = byCmd.get(s.id);
      const finals = e?.terminal ?? [];
      if (finals.length === 0) {
        cmdFigures.pending++;
        continue;
      }
      if (new Set(finals.map((f) => f.state)).size > 1) cmdFigures.conflicting++;
      const f = finals.find((x) => x.state === 'succeeded') ?? finals[0];
      if (f.state === 'succeeded') cmdFigures.succeeded++;
      else if (f.state === 'failed') inc(cmdFigures.failed, f.error?.code ?? 'unknown');
      else if (f.state === 'rejected') inc(cmdFigures.rejected, f.error?.code ?? 'unknown');
      else cmdFigures.cancelled++;
    }
    const failedTotal = Object.values(cmdFigures.failed).reduce((a, b) => a + b, 0);
    const rejectedTotal = Object.values(cmdFigures.rejected).reduce((a, b) => a + b, 0);

    // RSS
    const incs = daemon.incarnations;
    const lastInc = incs.at(-1)!;
    const longest = incs.filter((c) => c.upAt !== undefined).reduce((a, b) => ((b.endedAt ?? 0) - (b.upAt ?? 0) > (a.endedAt ?? 0) - (a.upAt ?? 0) ? b : a));
    // The end figure is taken under load: samples up to the end of the load.
    const fig = (c: Incarnation, m: RssFigure['measure']) => rssFigure(c, m, cfg.warmupMs, cfg.warmupJobs, cfg.windowMs, c === lastInc ? endMs : Infinity, boundKiB);
    const rssLongest = fig(longest, 'VmRSS');
    const anonLongest = fig(longest, 'RssAnon');
    const rssLast = longest === lastInc ? rssLongest : fig(lastInc, 'VmRSS');
    const anonLast = longest === lastInc ? anonLongest : fig(lastInc, 'RssAnon');
    const rssAll = incs.map((c) => fig(c, 'VmRSS')).filter((f): f is RssFigure => f !== undefined);
    // Both VmRSS and its heap part: reclaimed file pages (memory pressure from other processes) can hide growth in VmRSS, never in RssAnon.
    const rssChecked = [rssLongest, anonLongest, rssLast, anonLast];
    const rssOk = rssChecked.every((f) => f !== undefined && f.withinBound);
    const psiEnd = memoryPressure();
    const memoryStallS = psi0 && psiEnd ? (psiEnd.full - psi0.full) / 1e6 : null;

    const integrityDevice = integrity(devDb);
    const integrityController = integrity(fleetDb);
    const crashes = incs.filter((c) => c.end === 'crash').length;

    const failedUp = Object.values(load.failedWhileUp).reduce((a, b) => a + b, 0);
    const cut = Object.values(load.cutByFault).reduce((a, b) => a + b, 0);
    const lat = [...load.latencyMs].sort((a, b) => a - b);
    const latJob = [...load.latencyDuringJobMs].sort((a, b) => a - b);
    const checks = {
      lost: lostIds.length === 0,
      duplicates: duplicates === 0 && unknownIds.length === 0,
      rss: rssOk,
      integrity: integrityDevice === 'ok' && integrityController === 'ok',
    };
    ok = Object.values(checks).every(Boolean);

    const figures = {
      ok,
      checks,
      command: `npm run soak -- ${o.argv.join(' ')}`.trim(),
      seed: o.seed,
      date: new Date().toISOString(),
      minutes: o.minutes,
      quietMinutes: o.quietMinutes,
      loadMs: Math.round(endMs),
      drainMs: Math.round(drainMs),
      drained,
      settings: { rate: o.rate, ...cfg },
      faults: { ...faults, daemonIncarnations: incs.length, crashes },
      requests: { sent: load.sent, served: load.served, failedWhileUp: load.failedWhileUp, refusedWhileDown: load.refusedWhileDown, cutByFault: load.cutByFault, p50Ms: pctl(lat, 50), p99Ms: pctl(lat, 99), maxMs: lat.at(-1) ?? null, duringJob: { n: latJob.length, p50Ms: pctl(latJob, 50), p99Ms: pctl(latJob, 99), maxMs: latJob.at(-1) ?? null } },
      commands: cmdFigures,
      reports: {
        produced: produced.size,
        queued: reportCmd.size,
        producedNotQueued: producedNotQueued.length,
        outboxLeft,
        jobsLeft,
        received: received.size,
        controllerRows: reportRows.length,
        deliveries: reportEvents.delivered,
        redeliveriesIgnored: reportEvents.redelivered,
        lost: lostIds.length,
        lostIds,
        duplicates,
        unknown: unknownIds.length,
      },
      runs: runStates,
      rss: { boundMiB: o.rssBoundMiB, longest: rssLongest, longestAnon: anonLongest, last: rssLast, lastAnon: anonLast, all: rssAll },
      machine: { memoryFullStallS: memoryStallS, harnessStalls: stalls },
      integrity: { device: integrityDevice, controller: integrityController },
      capture: { ...capture, samplesKept },
      models: { versions: Object.fromEntries(versions.map((v) => [v.kind, v.n])), active },
      daemonLog: { errors: daemon.errors, warnings: daemon.warnings, events: daemon.events },
      controllerLog: ctlCounts,
      controllerFailure: controllerFailure?.message ?? null,
      invalidMessages: invalid.length,
      publishErrors: sent.filter((s) => s.error).map((s) => `${s.id}: ${s.error}`),
    };

    const signed = (kib: number) => `${kib >= 0 ? '+' : '−'}${mib(Math.abs(kib))}`;
    const rssRow = (label: string, f: RssFigure | undefined, measure: RssFigure['measure']) =>
      f
        ? `| ${label} #${f.n}: ${(f.lifeS / 60).toFixed(1)} min, ${f.jobs} optimize jobs | ${measure} | ${mib(f.freshKiB)} | ${mib(f.startKiB)} | ${mib(f.midKiB)} | ${mib(f.endKiB)} | ${signed(f.growthKiB)} | ${signed(f.secondHalfKiB)} | ${f.slopeMiBPerHour === null ? '—' : `${f.slopeMiBPerHour >= 0 ? '+' : '−'}${Math.abs(f.slopeMiBPerHour).toFixed(1)} MiB/h`} | ${mib(f.jobPeakKiB)}${measure === 'VmRSS' ? ` / ${mib(f.hwmKiB)}` : ''} | ${f.withinBound ? 'yes' : '**no**'} |`
        : `| ${label}: too short to measure | ${measure} | | | | | | | | | **no** |`;
    const stallNote = stalls.length
      ? ` The machine stalled ${stalls.length} time(s) during the run (this process's 2-second sampler late by up to ${secs(Math.max(...stalls.map((x) => x.lateMs)))}, at ${stalls.map((x) => `+${secs(x.at)}`).join(', ')})${memoryStallS !== null ? `; the kernel counted ${memoryStallS.toFixed(1)} s in which every task waited for memory (PSI, caused by other processes on the machine)` : ''}: file-backed pages are reclaimed then, which lowers VmRSS for a while but not RssAnon.`
      : memoryStallS !== null ? ` Memory pressure on the machine during the run (PSI, every task stalled): ${memoryStallS.toFixed(1)} s.` : '';
    // A fresh daemon's idle RSS: per incarnation, the first idle sample 10 s after the endpoint came up, before any job ended.
    const fresh = median(
      incs
        .map((c) => c.rss.find(([t, , j]) => c.upAt !== undefined && t >= c.upAt + 10_000 && j === 0 && (c.firstJobDoneAt === undefined || t < c.firstJobDoneAt))?.[1])
        .filter((x): x is number => x !== undefined),
    );
    const ref = rssLast ?? rssLongest;
    const lift = ref ? ref.jobLiftKiB : NaN;
    const killsTotal = faults.sigkill + faults.sigterm + faults.sigtermForced;
    const md = [
      '## Soak and fault run',
      '',
      `Produced by \`${figures.command}\` (${figures.date.slice(0, 10)}, seed ${o.seed}${o.seedGiven ? '' : ': add `--seed ' + o.seed + '` to replay the schedule'}) on ${cpus()[0]?.model ?? 'unknown'} × ${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, ${platform()} ${release()}, Node ${process.version}, ${mosquittoVersion() ?? 'mosquitto'}; the machine's cores were shared with other work during the run.`,
      '',
      `One \`edgeq run\` daemon (child process, run from a copy of dist/ built from ${built}; ${o.glibcDefaults ? "glibc malloc's defaults (`--glibc-defaults`)" : `started like systemd/edgeq.service starts it, with ${Object.entries(MALLOC_ENV).map(([k, v]) => `${k}=${v}`).join(' ')}`}; 1 ONNX Runtime thread; endpoint on a Unix socket; capture on for \`fmnist\` at rate ${cfg.captureRate}, at most ${cfg.captureMax} samples; the fixture CNN registered with ${cfg.samples} labelled samples), a private mosquitto with persistence, and in the soak process the fleet controller (\`FleetController\` on a persistent session, SQLite store) and the load: ${o.rate} batch-1 JSON requests/s over 2 keep-alive connections, fixture test images with one pixel nudged per request so that every input is new and capture keeps writing (the reservoir evicts). An \`optimize\` command (new id each time; method histogram/minmax/percentile in turn, 50 bench runs) every ${cfg.commandEveryS.join('–')} s. Faults for the first ${((faultsUntilMs) / 60_000).toFixed(1)} min: the daemon killed every ${cfg.killEveryS.join('–')} s (${Math.round(cfg.sigkillShare * 100)}% SIGKILL, the rest SIGTERM; ${Math.round(cfg.aimedShare * 100)}% of kills aimed into a running job) and restarted ${cfg.downS.join('–')} s later; mosquitto stopped (SIGTERM, it saves its persistence) every ${cfg.brokerEveryS.join('–')} s and restarted ${cfg.brokerDownS.join('–')} s later, until ${secs(brokerUntilMs)}. No daemon kill in the last ${o.quietMinutes.toFixed(1)} min. Then load and commands stop, the outbox drains (${drained ? `done in ${secs(drainMs)}` : `**not drained** after ${secs(drainMs)}`}), the daemon stops with SIGTERM and both stores are checked.`,
      '',
      `**${ok ? 'PASS' : 'FAIL'}**: reports lost **${lostIds.length}**, duplicated **${duplicates}**${unknownIds.length ? `, unknown ${unknownIds.length}` : ''}; RSS growth within ${o.rssBoundMiB} MiB: **${rssOk ? 'yes' : 'no'}**; integrity: device store **${integrityDevice}**, controller store **${integrityController}**.`,
      '',
      '| faults | |',
      '|---|---:|',
      `| loaded run | ${(endMs / 60_000).toFixed(1)} min |`,
      `| daemon kills | ${killsTotal}: SIGKILL ${faults.sigkill}, SIGTERM ${faults.sigterm + faults.sigtermForced}${faults.sigtermForced ? ` (${faults.sigtermForced} needed SIGKILL)` : ''}; ${faults.duringJob} during a job |`,
      `| daemon down in all (kill → endpoint serving again) | ${secs(faults.downMs)} |`,
      `| daemon exits nobody asked for (crashes) | ${crashes} |`,
      `| broker restarts | ${faults.brokerRestarts} (down ${secs(faults.brokerDownMs)} in all) |`,
      '',
      '| inference requests | |',
      '|---|---:|',
      `| sent | ${load.sent} |`,
      `| served | ${load.served} |`,
      `| round trip, no job running: p50 / p99 / max | ${pctl(lat, 50).toFixed(2)} / ${pctl(lat, 99).toFixed(2)} / ${(lat.at(-1) ?? NaN).toFixed(1)} ms |`,
      `| round trip while an optimize job ran: p50 / p99 / max | ${pctl(latJob, 50).toFixed(2)} / ${pctl(latJob, 99).toFixed(2)} / ${(latJob.at(-1) ?? NaN).toFixed(1)} ms |`,
      `| failed while the daemon was up | ${failedUp}${failedUp ? ` (${fmtCounts(load.failedWhileUp)})` : ''} |`,
      `| refused while it was down | ${load.refusedWhileDown} |`,
      `| cut by a kill or a graceful stop | ${cut}${cut ? ` (${fmtCounts(load.cutByFault)})` : ''} |`,
      `| captured: offered / kept now / evicted | ${capture?.seen ?? 0} / ${samplesKept} / ${capture?.evicted ?? 0} |`,
      '',
      '| optimize commands | |',
      '|---|---:|',
      `| sent | ${cmdFigures.sent} |`,
      `| succeeded | ${cmdFigures.succeeded} |`,
      `| failed | ${failedTotal}${failedTotal ? ` (${fmtCounts(cmdFigures.failed)})` : ''} |`,
      `| cancelled / rejected | ${cmdFigures.cancelled} / ${rejectedTotal}${rejectedTotal ? ` (${fmtCounts(cmdFigures.rejected)})` : ''} |`,
      `| still pending after the drain | ${cmdFigures.pending} |`,
      `| with conflicting terminal replies | ${cmdFigures.conflicting} |`,
      '',
      '| run reports | |',
      '|---|---:|',
      `| produced by the device (succeeded optimize runs in its store) | ${produced.size} |`,
      `| queued for sending with their command's answer | ${reportCmd.size} |`,
      `| left in the device's outbox at the end | ${outboxLeft} |`,
      `| delivered to the controller (redeliveries included) | ${reportEvents.delivered} (${reportEvents.redelivered} redeliveries ignored by report id) |`,
      `| rows in the controller's report table | ${reportRows.length} |`,
      `| **lost** (produced, not in the controller's table) | **${lostIds.length}** |`,
      `| **duplicates** (rows beyond one per command) | **${duplicates}** |`,
      ...(unknownIds.length ? [`| rows of no report the device produced | ${unknownIds.length} |`] : []),
      '',
      `Daemon memory: VmRSS and its heap part RssAnon from /proc every 2 s, figures from idle samples (no optimize job running at that sample nor the one before). Start: median over ${cfg.windowMs / 1000} s after warm-up (${cfg.warmupMs / 1000} s after the endpoint came up and 5 s after the incarnation's ${['first', 'second', 'third'][cfg.warmupJobs - 1] ?? `${cfg.warmupJobs}th`} optimize job ended, whichever is later); mid and end: medians over ${cfg.windowMs / 1000} s halfway and at the end of the load. Bound: growth start → end ≤ ${o.rssBoundMiB} MiB, of both, for the longest-lived and for the last incarnation.${stallNote}`,
      '',
      '| incarnation | measure | fresh | after warm-up | mid | end | growth (warm → end) | of which second half | trend (least squares, idle) | during a job: highest / VmHWM | within bound |',
      '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
      rssRow(longest === lastInc ? 'longest-lived and last' : 'longest-lived', rssLongest, 'VmRSS'),
      rssRow(longest === lastInc ? 'longest-lived and last' : 'longest-lived', anonLongest, 'RssAnon'),
      ...(longest === lastInc ? [] : [rssRow('last', rssLast, 'VmRSS'), rssRow('last', anonLast, 'RssAnon')]),
      '',
      `${rssAll.length === 1 ? 'The only incarnation' : `All ${rssAll.length} incarnations`} long enough to measure: idle VmRSS start ${mib(Math.min(...rssAll.map((f) => f.startKiB)))}–${mib(Math.max(...rssAll.map((f) => f.startKiB)))}, largest growth ${signed(Math.max(...rssAll.map((f) => f.growthKiB)))}.`,
      '',
      `Why ${o.rssBoundMiB} MiB: a fresh daemon idles at about ${mib(fresh)} once the endpoint serves. An optimize job lifts RSS by about ${mib(lift)} while it runs (median over the jobs of the incarnation above: calibration batches and histograms, the ONNX Runtime sessions of quantize and eval, the new int8 version loading in the endpoint). With glibc's defaults malloc gives that back only in part (a freed large block raises the mmap threshold, so the next job's blocks land in the heap, and what is freed in the middle of a heap stays resident): idle RSS then swings by up to ~70 MiB from job to job and the end figure is luck (\`npm run bench:memory\`); the unit's malloc settings (agent/daemon/malloc-env.ts) return it. V8 also grows its heap once or twice over the first jobs; hence the warm-up of ${cfg.warmupMs / 60_000} min and ${cfg.warmupJobs} jobs. From there ${o.rssBoundMiB} MiB is about one more job's working set: growth past it — or a second half about as large as the first — is a leak. A leak of one request's JSON body (${(load.bodyBytes / 1024).toFixed(0)} KiB) per request would pass it after ${Math.round((boundKiB * 1024) / Math.max(1, load.bodyBytes))} requests (${((boundKiB * 1024) / Math.max(1, load.bodyBytes) / o.rate / 60).toFixed(1)} min at ${o.rate} requests/s); keeping every job's working set would pass it within two jobs.`,
      '',
      `SQLite \`PRAGMA integrity_check\`: device store ${integrityDevice}, controller store ${integrityController}. Runs in the device store: ${fmtCounts(runStates)}; fmnist versions ${versions.map((v) => `${v.kind} ${v.n}`).join(', ')} (active v${active?.version ?? '?'} ${active?.kind ?? ''}). Daemon log errors: ${fmtCounts(daemon.errors)}.`,
    ].join('\n');

    if (o.json) process.stdout.write(JSON.stringify(figures, null, 2) + '\n');
    else process.stdout.write(md + '\n');
    writeFileSync(join(dir, 'figures.json'), JSON.stringify(figures, null, 2) + '\n');
    writeFileSync(join(dir, 'failures.json'), JSON.stringify(load.failures, null, 1) + '\n');
    writeFileSync(join(dir, 'rss.json'), JSON.stringify(incs.map((c) => ({ n: c.n, pid: c.pid, upAt: c.upAt, endedAt: c.endedAt, end: c.end, jobs: c.jobsDone, firstJobDoneAt: c.firstJobDoneAt, rss: c.rss, anon: c.anon })), null, 1) + '\n');
    if (o.write) {
      writeSection(join(ROOT, 'bench/RESULTS.md'), 'soak', md);
      log('wrote the soak section of bench/RESULTS.md');
    }
    if (!ok) log(`FAIL: ${Object.entries(checks).filter(([, v]) => !v).map(([k]) => k).join(', ')}`);
  } finally {
    cleanup();
    if (ok && !o.keep) rmSync(dir, { recursive: true, force: true });
    else log(`run directory kept: ${dir}`);
    if (!ok) process.exitCode = 1;
  }
}

await main();
