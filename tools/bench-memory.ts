/**
 * `npm run bench:memory`: what the daemon's idle memory does over repeated optimize jobs, with
 * glibc malloc's defaults and with the settings systemd/edgeq.service starts it with
 * (agent/daemon/malloc-env.ts). Each setting runs in its own process (glibc reads them at start):
 * the fixture CNN with labelled samples in a fresh store, the local endpoint on a Unix socket,
 * then N optimize jobs as the daemon runs them (optimizeFromStore: calibrate, evaluate, bench,
 * register, promote, prune), each followed by a few inference requests so that the endpoint
 * loads the new version, a full GC, and a sample of VmRSS, RssAnon and V8's heap. The figures
 * go to the 'memory' section of bench/RESULTS.md.
 *
 *   npm run bench:memory -- [--jobs N] [--no-write] [--json]
 */
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MALLOC_ENV } from '../agent/daemon/malloc-env.js';
import { startEndpoint } from '../agent/endpoint.js';
import { optimizeFromStore } from '../agent/optimize.js';
import { storeFile } from '../agent/state.js';
import { Store } from '../agent/store/index.js';
import { readNpy } from '../quant/npy.js';
import { profileWith } from '../quant/profiles.js';
import { FMNIST_FIXTURE, prepareFixtureState } from './fixture-state.js';
import { writeSection } from './results-md.js';

const ROOT = resolve('.');
const USAGE = `npm run bench:memory -- [--jobs N] [--no-write] [--json]

Idle memory of the daemon's process over N optimize jobs (default 20), with glibc malloc's
defaults and with the settings of systemd/edgeq.service; writes the 'memory' section of
bench/RESULTS.md unless --no-write.`;

interface Sample {
  job: number;
  rssMiB: number;
  anonMiB: number;
  heapUsedMiB: number;
  heapTotalMiB: number;
  externalMiB: number;
}

const MiB = 2 ** 20;

function procStatus(): { rssMiB: number; anonMiB: number; hwmMiB: number } {
  const s = readFileSync('/proc/self/status', 'utf8');
  const kib = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(s)?.[1] ?? NaN);
  return { rssMiB: kib('VmRSS') / 1024, anonMiB: kib('RssAnon') / 1024, hwmMiB: kib('VmHWM') / 1024 };
}

function infer(socketPath: string, body: string): Promise<void> {
  return new Promise((ok, fail) => {
    const req = request({ socketPath, method: 'POST', path: '/v1/models/fmnist/infer', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? ok() : fail(new Error(`endpoint answered HTTP ${res.statusCode}`))));
    });
    req.on('error', fail);
    req.end(body);
  });
}

/** The measured process: one setting, N jobs, one JSON line per sample on stdout. */
async function child(jobs: number): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with --expose-gc');
  const dir = mkdtempSync(join(tmpdir(), 'edgeq-bench-memory-'));
  const emit = (x: object) => process.stdout.write(`${JSON.stringify(x)}\n`);
  const sample = (job: number): Sample => {
    gc();
    const m = process.memoryUsage();
    const p = procStatus();
    return { job, rssMiB: p.rssMiB, anonMiB: p.anonMiB, heapUsedMiB: m.heapUsed / MiB, heapTotalMiB: m.heapTotal / MiB, externalMiB: m.external / MiB };
  };
  try {
    const stateDir = join(dir, 'state');
    mkdirSync(stateDir);
    await prepareFixtureState(stateDir, dir, 300, 'bench-memory');
    const store = Store.open(storeFile(stateDir));
    const x = readNpy(FMNIST_FIXTURE.test).data as Float32Array;
    const socket = join(dir, 'edgeq.sock');
    const endpoint = await startEndpoint(store, { socket, capture: false, threads: 1, probation: { confirmAfter: 0 }, log: () => {} });
    const bodies = Array.from({ length: 10 }, (_, i) => JSON.stringify({ inputs: { input: { shape: [1, 1, 28, 28], data: Array.from(x.subarray(i * 784, (i + 1) * 784)) } } }));
    const serve = async () => {
      for (const b of bodies) await infer(socket, b);
    };
    await serve();
    emit(sample(0));
    const methods = ['histogram', 'minmax', 'percentile'] as const;
    for (let j = 1; j <= jobs; j++) {
      await optimizeFromStore(store, stateDir, 'fmnist', { quantize: { profile: profileWith('fbgemm'), method: methods[j % 3], threads: 1 }, reason: 'bench:memory', runs: 50, warmup: 10, keepVersions: 3 });
      await serve();
      emit(sample(j));
    }
    emit({ hwmMiB: procStatus().hwmMiB });
    await endpoint.close();
    store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

interface Variant {
  name: string;
  env: Record<string, string | undefined>;
  samples: Sample[];
  hwmMiB: number;
}

function runVariant(name: string, env: Record<string, string | undefined>, jobs: number): Promise<Variant> {
  return new Promise((ok, fail) => {
    const p = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--child', '--jobs', String(jobs)], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (d: string) => {
      out += d;
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const l of lines) {
        const x = JSON.parse(l) as Sample | { hwmMiB: number };
        if ('job' in x) {
          v.samples.push(x);
          process.stderr.write(`[${name}] job ${x.job}: RssAnon ${x.anonMiB.toFixed(1)} MiB, VmRSS ${x.rssMiB.toFixed(1)} MiB, V8 heap ${x.heapUsedMiB.toFixed(1)}/${x.heapTotalMiB.toFixed(1)} MiB\n`);
        } else v.hwmMiB = x.hwmMiB;
      }
    });
    const v: Variant = { name, env, samples: [], hwmMiB: NaN };
    p.on('error', fail);
    p.on('exit', (code) => (code === 0 ? ok(v) : fail(new Error(`the ${name} run exited with ${code}`))));
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** Idle RssAnon after the first three jobs (V8 and the allocator settle): range and spread. */
function summary(v: Variant) {
  const after = v.samples.filter((s) => s.job >= 3);
  const anon = after.map((s) => s.anonMiB);
  const steps = after.slice(1).map((s, i) => Math.abs(s.anonMiB - after[i].anonMiB));
  return {
    fresh: v.samples[0].anonMiB,
    min: Math.min(...anon),
    median: median(anon),
    max: Math.max(...anon),
    last: anon.at(-1)!,
    largestStep: Math.max(...steps),
    heapUsed: [Math.min(...after.map((s) => s.heapUsedMiB)), Math.max(...after.map((s) => s.heapUsedMiB))] as const,
    rssMax: Math.max(...after.map((s) => s.rssMiB)),
    hwm: v.hwmMiB,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.includes('--help')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const i = args.indexOf('--jobs');
  const jobs = i >= 0 ? Number(args[i + 1]) : 20;
  if (!Number.isInteger(jobs) || jobs < 4 || jobs > 1000) {
    process.stderr.write(`bench:memory: error: --jobs needs a whole number from 4 to 1000, got ${JSON.stringify(args[i + 1] ?? null)}\n\n${USAGE}\n`);
    process.exit(2);
  }
  if (args.includes('--child')) return child(jobs);
  if (process.platform !== 'linux') throw new Error('bench:memory reads /proc: Linux only');

  const unset = Object.fromEntries(Object.keys(MALLOC_ENV).map((k) => [k, undefined]));
  const variants = [await runVariant("glibc's defaults", unset, jobs), await runVariant('systemd/edgeq.service', { ...MALLOC_ENV }, jobs)];
  const sums = variants.map((v) => ({ v, s: summary(v) }));
  if (args.includes('--json')) {
    process.stdout.write(`${JSON.stringify(sums.map(({ v, s }) => ({ name: v.name, env: v.env, summary: s, samples: v.samples })), null, 2)}\n`);
  }
  const f = (x: number) => x.toFixed(1);
  const settings = Object.entries(MALLOC_ENV).map(([k, v]) => `${k}=${v}`).join(' ');
  const md = [
    '## Memory over repeated optimize jobs',
    '',
    `Command: \`npm run bench:memory -- --jobs ${jobs}\` (${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.version}). One process per setting: the fixture CNN with 300 labelled samples, the local endpoint (Unix socket, 1 ONNX Runtime thread), then ${jobs} optimize jobs as the daemon runs them (methods histogram/minmax/percentile in turn, 50 bench runs, 3 versions kept), each followed by 10 inference requests (the endpoint loads the new version) and a full GC before the sample. RssAnon is the process's anonymous resident memory (heaps, V8, ONNX Runtime); figures are idle samples from job 3 on.`,
    '',
    '| malloc | fresh | min | median | max | after the last job | largest change between jobs | V8 heap used | VmRSS max / VmHWM |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...sums.map(({ v, s }) => `| ${v.name === 'systemd/edgeq.service' ? `as systemd/edgeq.service (${settings})` : v.name} | ${f(s.fresh)} | ${f(s.min)} | ${f(s.median)} | ${f(s.max)} | ${f(s.last)} | ${f(s.largestStep)} | ${f(s.heapUsed[0])}–${f(s.heapUsed[1])} | ${f(s.rssMax)} / ${f(s.hwm)} |`),
    '',
    'All figures MiB. Per job, RssAnon:',
    '',
    `| job | ${variants.map((v) => v.name).join(' | ')} |`,
    `|---:|${variants.map(() => '---:').join('|')}|`,
    ...variants[0].samples.map((s, k) => `| ${s.job} | ${variants.map((v) => f(v.samples[k]?.anonMiB ?? NaN)).join(' | ')} |`),
  ].join('\n');
  if (!args.includes('--json')) process.stdout.write(`${md}\n`);
  if (!args.includes('--no-write')) writeSection(join(ROOT, 'bench/RESULTS.md'), 'memory', md);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench:memory: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
