/**
 * `npm run bench:serve`: what capture costs the local endpoint. `edgeq serve` runs as its own
 * process on a Unix socket, serving the fixture CNN; this process sends batch-1 JSON requests
 * one after another over a keep-alive connection and times each round trip. Capture off and
 * capture at 100% sampling alternate over several rounds; the medians go to the 'serve' section
 * of bench/RESULTS.md.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { registerModel } from '../agent/models.js';
import { storeFile } from '../agent/state.js';
import { Store } from '../agent/store/index.js';
import { readNpy } from '../quant/npy.js';
import { writeSection } from './results-md.js';

const ROOT = resolve('.');
const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const REQUESTS = opt('--requests', 2000);
const ROUNDS = opt('--rounds', 3);
const WARMUP = 200;

function post(agent: Agent, socketPath: string, body: string): Promise<number> {
  return new Promise((ok, fail) => {
    const t0 = performance.now();
    const req = request({ socketPath, agent, method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? ok(performance.now() - t0) : fail(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('error', fail);
    req.end(body);
  });
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];

async function round(stateDir: string, capture: boolean, bodies: string[]): Promise<{ p50: number; p99: number; mean: number; kept: number }> {
  const p = spawn(process.execPath, [join(ROOT, 'bin/edgeq.js'), 'serve', '--state-dir', stateDir, ...(capture ? [] : ['--no-capture']), '--threads', '1'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise<void>((ok, fail) => {
    p.stdout.on('data', (d: Buffer) => (d.toString().includes('serving on') ? ok() : undefined));
    p.on('exit', (c) => fail(new Error(`edgeq serve exited with ${c}`)));
  });
  const socket = join(stateDir, 'edgeq.sock');
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const times: number[] = [];
  for (let i = 0; i < WARMUP + REQUESTS; i++) {
    const ms = await post(agent, socket, bodies[i % bodies.length]);
    if (i >= WARMUP) times.push(ms);
  }
  agent.destroy();
  const exited = new Promise((ok) => p.on('exit', ok));
  p.kill('SIGTERM');
  await exited;
  const store = Store.open(storeFile(stateDir));
  const kept = store.captureStats('fmnist').kept;
  store.close();
  times.sort((a, b) => a - b);
  return { p50: pct(times, 50), p99: pct(times, 99), mean: times.reduce((a, b) => a + b, 0) / times.length, kept };
}

async function main(): Promise<void> {
  const stateDir = mkdtempSync(join(tmpdir(), 'edgeq-bench-serve-'));
  try {
    const store = Store.open(storeFile(stateDir));
    await registerModel(store, stateDir, 'fmnist', join(ROOT, 'test/fixtures/fmnist/model.onnx'));
    // Every request considered; caps high enough that the reservoir keeps writing.
    store.setPolicy('fmnist', { enabled: true, rate: 1, maxSamples: 100_000, maxBytes: 1024 ** 3 });
    store.close();
    const x = readNpy(join(ROOT, 'test/fixtures/fmnist/test.npy')).data as Float32Array;
    const bodies = Array.from({ length: 1000 }, (_, i) => JSON.stringify({ inputs: { input: { shape: [1, 1, 28, 28], data: Array.from(x.subarray(i * 784, (i + 1) * 784)) } } }));
    const off: Awaited<ReturnType<typeof round>>[] = [];
    const on: typeof off = [];
    for (let r = 0; r < ROUNDS; r++) {
      off.push(await round(stateDir, false, bodies));
      on.push(await round(stateDir, true, bodies));
      process.stderr.write(`round ${r + 1}: capture off p50 ${off[r].p50.toFixed(3)} ms, on p50 ${on[r].p50.toFixed(3)} ms (kept ${on[r].kept})\n`);
    }
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const row = (rs: typeof off) => ({ p50: med(rs.map((r) => r.p50)), p99: med(rs.map((r) => r.p99)), mean: med(rs.map((r) => r.mean)) });
    const a = row(off);
    const b = row(on);
    const overhead = (b.p50 / a.p50 - 1) * 100;
    const lines = [
      '## Local endpoint: what capture costs',
      '',
      `Produced by \`npm run bench:serve\` (${new Date().toISOString().slice(0, 10)}) on ${cpus()[0]?.model ?? 'unknown'} × ${cpus().length}. \`edgeq serve\` in its own process (1 ORT thread) serving the fixture CNN on a Unix socket; ${REQUESTS} sequential batch-1 JSON requests per round over one keep-alive connection after ${WARMUP} warm-up requests, client round-trip time; capture off and capture at rate 1 (every request offered, deduplicated, written by the batching writer) alternate over ${ROUNDS} rounds, medians shown.`,
      '',
      '| capture | p50 | p99 | mean |',
      '|---|---|---|---|',
      `| off | ${a.p50.toFixed(3)} ms | ${a.p99.toFixed(3)} ms | ${a.mean.toFixed(3)} ms |`,
      `| on, rate 1 | ${b.p50.toFixed(3)} ms | ${b.p99.toFixed(3)} ms | ${b.mean.toFixed(3)} ms |`,
      '',
      `Capture adds ${overhead.toFixed(1)}% at p50 (${overhead < 10 ? 'within' : 'over'} the 10% budget) and ${((b.p99 / a.p99 - 1) * 100).toFixed(1)}% at p99. Samples kept at the end: ${on[on.length - 1].kept} (1000 distinct images; repeats are deduplicated).`,
    ];
    writeSection(join(ROOT, 'bench/RESULTS.md'), 'serve', lines.join('\n'));
    process.stderr.write(`${lines.slice(-1)[0]}\nwrote the serve section of bench/RESULTS.md\n`);
  } finally {
    rmSync(stateDir, { recursive: true, force: true });
  }
}

await main();
