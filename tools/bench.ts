/**
 * `npm run bench`: the measured claims of this project, written to the 'bench' section of
 * bench/RESULTS.md, to bench/results.json and to bench/results.svg.
 *
 * - the two Fashion-MNIST fixtures (CNN, MobileNetV2-style): fp32 vs int8 top-1, agreement,
 *   file sizes, what ORT runs, latency — beside PyTorch's eager PTQ of the same weights
 *   (tools/torch_bench.py, run first when torch is importable);
 * - a conv stack built in code (the kernel check) and torchvision ResNet18 (224×224): fp32 vs
 *   int8 batch-1 latency at 1 and 2 threads.
 *
 * Each latency measurement runs in its own Node process (benchInChild), so one ONNX Runtime
 * session is alive at a time and its peak RSS is its own; fp32 and int8 alternate over several
 * rounds so drift on a shared machine hits both alike.
 *
 *   npm run bench [-- --only fixture|mobilenet|convstack|resnet18] [--rounds N] [--runs N] [--warmup N] [--no-torch]
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { arch, cpus, loadavg, platform, release, totalmem } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { chooseProfile, localCpu } from '../agent/detect.js';
import { benchInChild, type BenchResult } from '../quant/bench-process.js';
import { evaluate } from '../quant/evaluate.js';
import { quantize, type QuantizeResult } from '../quant/index.js';
import { writeNpy } from '../quant/npy.js';
import { writeModel } from '../quant/onnx/model.js';
import { buildModel, floatInput, makeNode, makeTensor, randomFloats } from '../test/helpers/models.js';
import { writeSection } from './results-md.js';
import { renderBarsSvg, sig3, type BarRow } from './svg-bars.js';

const ROOT = resolve('.');
const MODELS = join(ROOT, 'bench/models');
const FMNIST = join(ROOT, 'test/fixtures/fmnist');
const PYTHON = '/usr/bin/python3';
const TORCH_JSON = join(ROOT, 'bench/torch.json');
const NAMES = ['fixture', 'mobilenet', 'convstack', 'resnet18'] as const;
type ModelId = (typeof NAMES)[number];

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\nusage: npm run bench [-- --only ${NAMES.join('|')}] [--rounds N] [--runs N] [--warmup N] [--no-torch]\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
function flag(name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) usage(`${name} needs a value`);
  return v;
}
function count(name: string, dflt: number, min: number): number {
  const v = flag(name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) usage(`${name} must be an integer ≥ ${min}, got ${v}`);
  return n;
}
for (const a of args) {
  if (a.startsWith('--') && !['--only', '--rounds', '--runs', '--warmup', '--no-torch'].includes(a)) usage(`unknown option ${a}`);
}
const only = flag('--only') as ModelId | undefined;
if (only !== undefined && !NAMES.includes(only)) usage(`--only takes one of ${NAMES.join(', ')}, got ${only}`);
const rounds = count('--rounds', 3, 1);
const runs = count('--runs', 200, 1);
const warmup = count('--warmup', 20, 0);
const noTorch = args.includes('--no-torch');
const wanted = (id: ModelId) => !only || only === id;

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const rel = (p: string) => relative(ROOT, p);

/**
 * CPU time of the whole machine and of this process with its waited-for children (the
 * benchmark processes, PyTorch), in clock ticks (USER_HZ, 100 on Linux), from /proc. The
 * difference over the run is what other processes took: the noise in these figures.
 */
function cpuTicks(): { busy: number; self: number } | undefined {
  try {
    const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal …
    const busy = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + (cpu[7] || 0);
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number); // f[0] is field 3 (state)
    const self = f[11] + f[12] + f[13] + f[14]; // utime stime cutime cstime
    return Number.isFinite(busy) && Number.isFinite(self) ? { busy, self } : undefined;
  } catch {
    return undefined; // not Linux
  }
}

interface Others {
  wallS: number;
  /** CPU-seconds other processes used during the run. */
  otherCpuS: number;
}

// ---------------------------------------------------------------------------------------------
// latency

interface LatencyRow {
  threads: number;
  /** The round whose p50 is the median of the rounds', for each side. */
  fp32: BenchResult;
  int8: BenchResult;
  /** fp32 p50 / int8 p50: the median over rounds of each round's ratio (> 1: int8 is faster). */
  speedup: number;
  rounds: Array<{ fp32P50Ms: number; int8P50Ms: number }>;
}

async function compareLatency(name: string, fp32: string, int8: string, data: string, threads: number): Promise<LatencyRow> {
  const a: BenchResult[] = [];
  const b: BenchResult[] = [];
  const one = (model: string) => benchInChild({ model, threads, runs, warmup, batch: 1, data: new Map([['', data]]) });
  for (let r = 0; r < rounds; r++) {
    a.push(await one(fp32));
    b.push(await one(int8));
    log(`  ${name}, ${threads} thread(s), round ${r + 1}/${rounds}: fp32 p50 ${a[r].p50Ms} ms, int8 p50 ${b[r].p50Ms} ms`);
  }
  const pick = (xs: BenchResult[]) => xs.slice().sort((x, y) => x.p50Ms - y.p50Ms)[Math.floor(xs.length / 2)];
  const speedups = a.map((x, i) => x.p50Ms / b[i].p50Ms);
  return {
    threads,
    fp32: pick(a),
    int8: pick(b),
    speedup: Math.round(median(speedups) * 1000) / 1000,
    rounds: a.map((x, i) => ({ fp32P50Ms: x.p50Ms, int8P50Ms: b[i].p50Ms })),
  };
}

async function latencies(name: string, fp32: string, int8: string, data: string): Promise<LatencyRow[]> {
  const out: LatencyRow[] = [];
  for (const threads of [1, 2]) out.push(await compareLatency(name, fp32, int8, data, threads));
  return out;
}

// ---------------------------------------------------------------------------------------------
// PyTorch (tools/torch_bench.py)

interface TorchLatency {
  p50_ms?: number;
  p90_ms?: number;
  max_abs_logit_diff_vs_eager?: number;
  error?: string;
}

interface TorchInt8 {
  engine: string;
  qconfig: string;
  observers: string;
  top1?: number;
  agreement?: number;
  p50_ms?: number;
  p90_ms?: number;
  size_bytes?: number;
  state_dict_bytes?: number;
  convert_s?: number;
  jit_frozen?: TorchLatency;
  error?: string;
}

interface TorchNetwork {
  onnx: string;
  fp32: { top1: number; p50_ms: number; p90_ms: number; size_bytes: number; state_dict_bytes: number; onnx_bytes: number; jit_optimized?: TorchLatency };
  int8: TorchInt8[];
}

interface TorchReport {
  torch: string;
  engines: string[];
  threads: number;
  latency_method: string;
  size_method: string;
  jit_method: string;
  convert_method: string;
  blas: string[];
  networks: Record<string, TorchNetwork>;
  elapsed_s: number;
}

type TorchRun = { ok: true; report: TorchReport; seconds: number } | { ok: false; reason: string };

function lastLine(s: string): string {
  return s.trim().split('\n').filter((l) => l.trim()).pop() ?? '';
}

async function runTorch(): Promise<TorchRun> {
  const probe = spawnSync(PYTHON, ['-c', 'import torch'], { encoding: 'utf8' });
  if (probe.error) return { ok: false, reason: `${PYTHON} cannot be run (${probe.error.message}); install Debian's python3-torch to get the PyTorch rows` };
  if (probe.status !== 0) return { ok: false, reason: `\`${PYTHON} -c 'import torch'\` failed (${lastLine(probe.stderr) || `exit ${probe.status}`}); install Debian's python3-torch to get the PyTorch rows` };
  log(`PyTorch: ${PYTHON} tools/torch_bench.py --out ${rel(TORCH_JSON)}`);
  const t0 = performance.now();
  const { code, tail } = await new Promise<{ code: number | null; tail: string }>((done) => {
    const child = spawn(PYTHON, [join(ROOT, 'tools/torch_bench.py'), '--out', TORCH_JSON], { stdio: ['ignore', 'inherit', 'pipe'] });
    let tail = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      process.stderr.write(chunk.replace(/^(?=.)/gm, '  torch: '));
      tail = (tail + chunk).slice(-4000);
    });
    child.on('error', (e) => done({ code: -1, tail: e.message }));
    child.on('close', (c) => done({ code: c, tail }));
  });
  const seconds = Math.round((performance.now() - t0) / 100) / 10;
  if (code !== 0) return { ok: false, reason: `tools/torch_bench.py exited with code ${code}: ${lastLine(tail)}` };
  try {
    return { ok: true, report: JSON.parse(readFileSync(TORCH_JSON, 'utf8')) as TorchReport, seconds };
  } catch (e) {
    return { ok: false, reason: `tools/torch_bench.py wrote no readable ${rel(TORCH_JSON)} (${(e as Error).message})` };
  }
}

// ---------------------------------------------------------------------------------------------
// models

interface Accuracy {
  data: string;
  samples: number;
  fp32Top1?: number;
  int8Top1?: number;
  agreement?: number;
  /** SQNR of the first output, int8 against fp32, over all samples. */
  sqnrDb?: number;
}

interface ModelResult {
  id: ModelId;
  name: string;
  /** For the chart. */
  short: string;
  fp32Path: string;
  int8Path: string;
  quantize: QuantizeResult;
  accuracy: Accuracy;
  latency: LatencyRow[];
  /** Network name in bench/torch.json, for the fixtures. */
  torchName?: string;
}

interface Skipped {
  id: ModelId;
  name: string;
  skipped: string;
}

type Result = ModelResult | Skipped;
const ran = (r: Result): r is ModelResult => !('skipped' in r);

async function score(model: string, compare: string, data: string, labels?: string): Promise<Accuracy> {
  const e = await evaluate({ model, compare, data: new Map([['', data]]), labels, batch: 50, threads: 1 });
  return {
    data: rel(data),
    samples: e.samples,
    fp32Top1: e.model.top1,
    int8Top1: e.compare?.top1,
    agreement: e.agreement,
    sqnrDb: e.outputs?.[0]?.sqnrDb,
  };
}

const FIXTURES = [
  {
    id: 'fixture' as const,
    name: 'fixture CNN (Fashion-MNIST; residual, BatchNorm)',
    short: 'fixture CNN',
    torchName: 'fixture CNN',
    model: join(FMNIST, 'model.onnx'),
    out: join(MODELS, 'fmnist.int8.onnx'),
  },
  {
    id: 'mobilenet' as const,
    name: 'fixture MobileNetV2-style (Fashion-MNIST; depthwise, ReLU6)',
    short: 'fixture MobileNetV2-style',
    torchName: 'fixture MobileNetV2-style',
    model: join(ROOT, 'test/fixtures/fmnist-mobilenet/model.onnx'),
    out: join(MODELS, 'fmnist-mobilenet.int8.onnx'),
  },
];

async function benchFixture(fx: (typeof FIXTURES)[number]): Promise<Result> {
  if (!existsSync(fx.model)) return { id: fx.id, name: fx.name, skipped: `${rel(fx.model)} is missing` };
  log(`${fx.short}: quantizing with 500 calibration images`);
  const q = await quantize({
    model: fx.model,
    calib: new Map([['', join(FMNIST, 'calib.npy')]]),
    out: fx.out,
    profile: chooseProfile(localCpu()).profile,
    calibCount: 500,
    threads: 1,
  });
  log(`${fx.short}: top-1 and agreement on the 1000 test images`);
  const accuracy = await score(fx.model, fx.out, join(FMNIST, 'test.npy'), join(FMNIST, 'test_labels.npy'));
  const latency = await latencies(fx.short, fx.model, fx.out, join(FMNIST, 'test.npy'));
  return { id: fx.id, name: fx.name, short: fx.short, fp32Path: fx.model, int8Path: fx.out, quantize: q, accuracy, latency, torchName: fx.torchName };
}

/**
 * The kernel-level check: four 3×3 convolutions, 64 channels at 56×56 — the layer shape where
 * int8 should win most clearly — fp32 vs int8 as ORT runs them. Built in code, no Python needed.
 */
async function benchConvStack(): Promise<Result> {
  const C = 64, H = 56;
  const nodes = [], inits = [];
  let x = 'input';
  for (let i = 0; i < 4; i++) {
    nodes.push(makeNode('Conv', [x, `W${i}`, `B${i}`], [`c${i}`], `conv${i}`, { kernel_shape: [3, 3], pads: [1, 1, 1, 1] }));
    nodes.push(makeNode('Relu', [`c${i}`], [`r${i}`], `relu${i}`));
    inits.push(makeTensor(`W${i}`, randomFloats(C * C * 9, i + 1, 0.05), [C, C, 3, 3]), makeTensor(`B${i}`, randomFloats(C, i + 9, 0.1), [C]));
    x = `r${i}`;
  }
  const fp32 = join(MODELS, 'convstack.onnx');
  writeModel(buildModel(nodes, [floatInput('input', ['N', C, H, H])], [floatInput(x, ['N', C, H, H])], inits), fp32);
  const calib = join(MODELS, 'convstack_calib.npy');
  writeNpy(calib, randomFloats(8 * C * H * H, 5), [8, C, H, H]);
  const out = join(MODELS, 'convstack.int8.onnx');
  log('conv stack: quantizing');
  const q = await quantize({ model: fp32, calib: new Map([['', calib]]), out, profile: chooseProfile(localCpu()).profile, method: 'minmax', threads: 1 });
  const accuracy = await score(fp32, out, calib);
  const latency = await latencies('conv stack', fp32, out, calib);
  return { id: 'convstack', name: 'Conv stack (4 × Conv3x3+Relu, 64 channels, 56×56; kernel check)', short: 'conv stack (kernel check)', fp32Path: fp32, int8Path: out, quantize: q, accuracy, latency };
}

function ensureResnet(): string | undefined {
  const files = ['resnet18.onnx', 'resnet18_calib.npy', 'resnet18_eval.npy'].map((f) => join(MODELS, f));
  if (files.every((f) => existsSync(f))) return undefined;
  log(`ResNet18 not found: exporting it with ${PYTHON} tools/export_resnet18.py (needs Debian python3-torch, python3-torchvision)`);
  const r = spawnSync(PYTHON, [join(ROOT, 'tools/export_resnet18.py'), '--out', MODELS], { stdio: ['ignore', 'inherit', 'pipe'], encoding: 'utf8' });
  if (r.stderr) process.stderr.write(r.stderr);
  if (r.error) return `${PYTHON} cannot be run (${r.error.message}); python3-torch and python3-torchvision are needed to export ResNet18`;
  if (r.status !== 0) return `tools/export_resnet18.py failed (${lastLine(r.stderr ?? '') || `exit ${r.status}`}); python3-torch and python3-torchvision are needed to export ResNet18`;
  return undefined;
}

async function benchResnet(): Promise<Result> {
  const name = 'ResNet18 (torchvision, random fixed-seed weights, 224×224)';
  const why = ensureResnet();
  if (why) return { id: 'resnet18', name, skipped: why };
  const fp32 = join(MODELS, 'resnet18.onnx');
  const out = join(MODELS, 'resnet18.int8.onnx');
  log('ResNet18: quantizing with 32 calibration images');
  const q = await quantize({ model: fp32, calib: new Map([['', join(MODELS, 'resnet18_calib.npy')]]), out, profile: chooseProfile(localCpu()).profile, threads: 1 });
  log('ResNet18: agreement on the 64 eval images');
  const accuracy = await score(fp32, out, join(MODELS, 'resnet18_eval.npy'));
  const latency = await latencies('ResNet18', fp32, out, join(MODELS, 'resnet18_eval.npy'));
  return { id: 'resnet18', name, short: 'ResNet18 (224×224)', fp32Path: fp32, int8Path: out, quantize: q, accuracy, latency };
}

// ---------------------------------------------------------------------------------------------
// edgeq beside PyTorch

interface Pick {
  engine: string;
  qconfig: string;
  value: number;
}

interface Comparison {
  edgeqFp32Top1: number;
  edgeqInt8Top1: number;
  /** fp32 top-1 − int8 top-1, in points (positive: int8 is worse). */
  edgeqDropPoints: number;
  torchFp32Top1: number;
  /** The qconfig with the smallest drop (ties: best agreement), and every one tied with it. */
  torchBestDrop?: Pick & { tied: string[] };
  accuracyHolds?: boolean;
  edgeqInt8P50Ms: number;
  edgeqFp32P50Ms: number;
  torchFastestEager?: Pick;
  torchFastestJit?: Pick;
  eagerHolds?: boolean;
  jitHolds?: boolean;
  torchFp32EagerP50Ms: number;
  torchFp32JitP50Ms?: number;
}

const points = (fp32: number, int8: number) => Math.round((fp32 - int8) * 10000) / 100;

function compare(r: ModelResult, t: TorchNetwork): Comparison | undefined {
  const a = r.accuracy;
  const l1 = r.latency.find((l) => l.threads === 1);
  if (a.fp32Top1 === undefined || a.int8Top1 === undefined || !l1) return undefined;
  const ok = t.int8.filter((e) => !e.error && e.top1 !== undefined);
  const c: Comparison = {
    edgeqFp32Top1: a.fp32Top1,
    edgeqInt8Top1: a.int8Top1,
    edgeqDropPoints: points(a.fp32Top1, a.int8Top1),
    torchFp32Top1: t.fp32.top1,
    edgeqInt8P50Ms: l1.int8.p50Ms,
    edgeqFp32P50Ms: l1.fp32.p50Ms,
    torchFp32EagerP50Ms: t.fp32.p50_ms,
    torchFp32JitP50Ms: t.fp32.jit_optimized?.p50_ms,
  };
  if (ok.length) {
    const drop = (e: TorchInt8) => points(t.fp32.top1, e.top1!);
    const best = ok.slice().sort((x, y) => drop(x) - drop(y) || (y.agreement ?? 0) - (x.agreement ?? 0))[0];
    c.torchBestDrop = {
      engine: best.engine,
      qconfig: best.qconfig,
      value: drop(best),
      tied: ok.filter((e) => drop(e) === drop(best)).map((e) => `${e.engine} · ${e.qconfig}`),
    };
    c.accuracyHolds = c.edgeqDropPoints <= c.torchBestDrop.value;
  }
  const fastest = (get: (e: TorchInt8) => number | undefined): Pick | undefined => {
    const xs = ok.filter((e) => get(e) !== undefined && Number.isFinite(get(e)));
    if (!xs.length) return undefined;
    const e = xs.sort((x, y) => get(x)! - get(y)!)[0];
    return { engine: e.engine, qconfig: e.qconfig, value: get(e)! };
  };
  c.torchFastestEager = fastest((e) => e.p50_ms);
  c.torchFastestJit = fastest((e) => e.jit_frozen?.p50_ms);
  if (c.torchFastestEager) c.eagerHolds = c.edgeqInt8P50Ms < c.torchFastestEager.value;
  if (c.torchFastestJit) c.jitHolds = c.edgeqInt8P50Ms < c.torchFastestJit.value;
  return c;
}

// ---------------------------------------------------------------------------------------------
// the report

function machine(): Record<string, string> {
  const cpu = localCpu();
  const isa = ['avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'amx_int8', 'asimddp', 'i8mm'].filter((f) => cpu.flags.has(f));
  const ortVersion = (JSON.parse(readFileSync(join(ROOT, 'node_modules/onnxruntime-node/package.json'), 'utf8')) as { version: string }).version;
  return {
    cpu: `${cpu.model || cpus()[0]?.model || 'unknown'} × ${cpus().length} (${cpu.cores.physical ?? '?'} physical)`,
    isa: isa.join(' ') || 'none of avx2/avx512/vnni/dotprod',
    profile: chooseProfile(cpu).reason,
    os: `${platform()} ${release()} ${arch()}`,
    memory: `${Math.round(totalmem() / 2 ** 30)} GiB`,
    node: process.version,
    onnxruntime: `onnxruntime-node ${ortVersion}`,
  };
}

const pct = (x: number | undefined) => (x === undefined ? '—' : `${(100 * x).toFixed(1)}%`);
const ms = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '—' : `${x < 1 ? x.toFixed(3) : x < 10 ? x.toFixed(2) : x.toFixed(1)} ms`);
const kib = (b: number | undefined) => (b === undefined ? '—' : `${(b / 1024).toFixed(1)} KiB`);
const size = (b: number | undefined) => (b !== undefined && b >= 10 * 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MiB` : kib(b));
const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
const signed = (p: number) => (p > 0 ? `+${p.toFixed(1)}` : p.toFixed(1));
const ops = (r: Record<string, number>) => Object.entries(r).map(([k, v]) => `${k}×${v}`).join(', ') || 'none';
const times = (x: number) => `${x.toFixed(2)}×`;
const holds = (b: boolean | undefined) => (b === undefined ? 'not measured' : b ? '**holds**' : '**fails**');

function modelSection(r: ModelResult, torch: TorchRun | undefined, cmp: Comparison | undefined): string[] {
  const q = r.quantize;
  const a = r.accuracy;
  const lines = [
    `### ${r.name}`,
    '',
    `Quantized with profile ${q.profile} (${q.perChannel ? 'per-channel' : 'per-tensor'} weights${q.reduceRange ? ', reduce_range' : ''}), ${q.method} observer, ${q.calibCount} calibration samples, 1 ORT thread; ${q.foldedBatchNorms} BatchNorm folded, ${q.absorbedActivations} activations absorbed; calibrate + convert ${((q.timingsMs.calibrate + q.timingsMs.convert) / 1000).toFixed(2)} s (all steps ${(q.timingsMs.total / 1000).toFixed(2)} s).`,
    '',
    '| measure | fp32 | int8 |',
    '|---|---|---|',
    `| file size | ${size(q.sizeBytes.fp32)} | ${size(q.sizeBytes.int8)} (${pct(q.sizeBytes.int8 / q.sizeBytes.fp32)}) |`,
  ];
  if (a.fp32Top1 !== undefined && a.int8Top1 !== undefined) {
    lines.push(`| top-1 on ${a.samples} test images (${a.data}) | ${pct(a.fp32Top1)} | ${pct(a.int8Top1)} (${signed(-points(a.fp32Top1, a.int8Top1))} points) |`);
  }
  if (a.agreement !== undefined) lines.push(`| top-1 agreement with fp32 (${a.samples} images of ${a.data}) | — | ${pct(a.agreement)} |`);
  if (a.sqnrDb !== undefined) lines.push(`| SQNR of the output vs fp32 (${a.samples} samples of ${a.data}) | — | ${a.sqnrDb.toFixed(1)} dB |`);
  for (const l of r.latency) {
    const th = `${l.threads} thread${l.threads > 1 ? 's' : ''}`;
    lines.push(`| latency p50 (p90), batch 1, ${th} | ${ms(l.fp32.p50Ms)} (${ms(l.fp32.p90Ms)}) | ${ms(l.int8.p50Ms)} (${ms(l.int8.p90Ms)}); **${times(l.speedup)}** speedup |`);
  }
  for (const l of r.latency) {
    lines.push(`| peak RSS of the benchmark process, ${l.threads} thread${l.threads > 1 ? 's' : ''} | ${mib(l.fp32.peakRssBytes)} | ${mib(l.int8.peakRssBytes)} |`);
  }
  lines.push(
    '',
    `p50 of each round, fp32 / int8: ${r.latency.map((l) => `${l.threads} thread${l.threads > 1 ? 's' : ''}: ${l.rounds.map((x) => `${x.fp32P50Ms.toFixed(3)} / ${x.int8P50Ms.toFixed(3)}`).join(', ')} ms`).join('; ')}.`,
    '',
    `ORT runs in int8: ${ops(q.int8Ops)}.`,
    `ORT runs in float: ${ops(q.floatOps)}.`,
    '',
  );
  if (!r.torchName) return lines;

  lines.push('#### Beside PyTorch', '');
  if (!torch) {
    lines.push('PyTorch was not run (`--no-torch`).', '');
    return lines;
  }
  if (!torch.ok) {
    lines.push(`**PyTorch rows skipped:** ${torch.reason}.`, '');
    return lines;
  }
  const t = torch.report.networks[r.torchName];
  if (!t) {
    lines.push(`**PyTorch rows skipped:** bench/torch.json has no network named "${r.torchName}".`, '');
    return lines;
  }
  const l1 = r.latency.find((l) => l.threads === 1);
  lines.push(
    `Same weights (loaded from ${t.onnx}), same 500 calibration images, same ${a.samples} test images. PyTorch ${torch.report.torch}, eager post-training static quantization (fuse → prepare → calibrate → convert) per engine × qconfig, at ${torch.report.threads} thread. Sizes: edgeq's are the .onnx files; PyTorch's are TorchScript files (\`torch.jit.save\` of the traced module). Conversion: edgeq calibrate + convert; PyTorch prepare + calibrate + convert (fusion excluded).`,
    '',
    '| who | engine · qconfig | top-1 | drop (points) | agreement | size | p50, 1 thread | p50, 1 thread, TorchScript | conversion |',
    '|---|---|---|---|---|---|---|---|---|',
    `| edgeq (ORT) | fp32 | ${pct(a.fp32Top1)} | — | — | ${kib(q.sizeBytes.fp32)} | ${ms(l1?.fp32.p50Ms)} | — | — |`,
    `| **edgeq (ORT)** | **${q.profile} · ${q.method} · ${q.perChannel ? 'per-channel' : 'per-tensor'}** | **${pct(a.int8Top1)}** | **${cmp ? cmp.edgeqDropPoints.toFixed(1) : '—'}** | **${pct(a.agreement)}** | **${kib(q.sizeBytes.int8)}** | **${ms(l1?.int8.p50Ms)}** | — | **${((q.timingsMs.calibrate + q.timingsMs.convert) / 1000).toFixed(2)} s** |`,
    `| PyTorch eager | fp32 | ${pct(t.fp32.top1)} | — | — | ${kib(t.fp32.size_bytes)} | ${ms(t.fp32.p50_ms)} | ${t.fp32.jit_optimized?.error ? 'failed' : `${ms(t.fp32.jit_optimized?.p50_ms)} (optimize_for_inference)`} | — |`,
  );
  for (const e of t.int8) {
    if (e.error) {
      lines.push(`| PyTorch eager | ${e.engine} · ${e.qconfig} | failed: ${e.error.replace(/\|/g, '\\|')} | | | | | | |`);
      continue;
    }
    const jit = e.jit_frozen?.error ? 'failed' : `${ms(e.jit_frozen?.p50_ms)} (freeze)`;
    lines.push(`| PyTorch eager | ${e.engine} · ${e.qconfig} | ${pct(e.top1)} | ${points(t.fp32.top1, e.top1!).toFixed(1)} | ${pct(e.agreement)} | ${kib(e.size_bytes)} | ${ms(e.p50_ms)} | ${jit} | ${e.convert_s?.toFixed(2) ?? '—'} s |`);
  }
  lines.push('', 'qconfigs: minmax = MinMaxObserver activations, per-tensor symmetric MinMax weights; histogram_pc = HistogramObserver activations, per-channel symmetric weights (torch 1.13\'s default onednn qconfig).', '');
  if (!cmp) {
    lines.push('No comparison: edgeq has no top-1 or 1-thread latency for this model.', '');
    return lines;
  }
  const best = cmp.torchBestDrop;
  lines.push(
    best
      ? `- **Accuracy**: edgeq's int8 top-1 drop is ${cmp.edgeqDropPoints.toFixed(1)} points; PyTorch's best qconfig (${best.tied.join(', ')}) drops ${best.value.toFixed(1)} points. edgeq's drop no larger than PyTorch's best: ${holds(cmp.accuracyHolds)}.`
      : '- **Accuracy**: every PyTorch qconfig failed; nothing to compare.',
  );
  const lat = (what: string, p: Pick | undefined, ok: boolean | undefined) =>
    p
      ? `- **int8 latency, batch 1, 1 thread, against PyTorch ${what}**: edgeq ${ms(cmp.edgeqInt8P50Ms)}; PyTorch's fastest (${p.engine} · ${p.qconfig}) ${ms(p.value)}; ${cmp.edgeqInt8P50Ms < p.value ? `edgeq is ${times(p.value / cmp.edgeqInt8P50Ms)} faster` : `edgeq is ${times(cmp.edgeqInt8P50Ms / p.value)} slower`}. edgeq lower: ${holds(ok)}.`
      : `- **int8 latency against PyTorch ${what}**: no PyTorch figure.`;
  lines.push(lat('eager', cmp.torchFastestEager, cmp.eagerHolds), lat('frozen TorchScript', cmp.torchFastestJit, cmp.jitHolds));
  lines.push(
    `- fp32, as measured (not compared): edgeq (ORT) ${ms(cmp.edgeqFp32P50Ms)}, PyTorch eager ${ms(cmp.torchFp32EagerP50Ms)}, PyTorch TorchScript optimize_for_inference ${ms(cmp.torchFp32JitP50Ms)}.`,
    '',
  );
  return lines;
}

function reading(results: ModelResult[], facts: Record<string, string>, torch: TorchRun | undefined, comparisons: Map<string, Comparison>, others: Others | undefined): string[] {
  const isa = localCpu().isa;
  const vnni = isa.avx512vnni || isa.avxvnni;
  const s1 = (id: ModelId) => results.find((r) => r.id === id)?.latency.find((l) => l.threads === 1)?.speedup;
  const stack = s1('convstack');
  const lines: string[] = [];
  if (stack !== undefined && !vnni && !isa.neon) {
    lines.push(
      `This CPU has no VNNI (${facts.isa}). ONNX Runtime's u8×s8 kernels there multiply with VPMADDUBSW and widen with VPMADDWD, which on this CPU reaches about the multiply-accumulate rate of its fp32 FMA kernels: the conv stack, the most favourable shape for int8, runs at ${(1 / stack).toFixed(2)}× fp32 latency with one thread, and an ORT profile of ResNet18 puts 99% of both models' time in (QLinear)Conv. The int8 latency gain needs VNNI (AVX-512 VNNI, AVX-VNNI) or ARM dotprod; the 4× size reduction and the accuracy hold everywhere.`,
      '',
    );
  }
  if (vnni) {
    const parts = (['convstack', 'resnet18', 'fixture', 'mobilenet'] as const)
      .map((id) => [results.find((r) => r.id === id)?.short, s1(id)] as const)
      .filter((p): p is readonly [string, number] => p[0] !== undefined && p[1] !== undefined)
      .map(([n, s]) => `${n} ${times(s)}`);
    if (parts.length) {
      lines.push(
        `This CPU has ${[isa.avx512vnni && 'AVX-512 VNNI', isa.avxvnni && 'AVX-VNNI'].filter(Boolean).join(' and ')}: u8×s8 products accumulate into int32 in one instruction (VPDPBUSD), without the saturation that makes edgeq use 7-bit weights on CPUs without it, so the profile keeps 8-bit weights. int8 speedup over fp32, batch 1, 1 thread: ${parts.join(', ')}.`,
      );
      const fx = [s1('fixture'), s1('mobilenet')].filter((x): x is number => x !== undefined);
      const big = [stack, s1('resnet18')].filter((x): x is number => x !== undefined);
      if (fx.length && big.length && Math.max(...fx) < Math.min(...big)) {
        lines.push(
          `The fixtures gain less than the conv stack and ResNet18: they take a fraction of a millisecond per image, so fixed per-call costs (the Node → ONNX Runtime call, layout transposes, waking threads) are a large share of their time.`,
        );
      }
      lines.push('');
    }
  }
  const p50 = (r: ModelResult, t: number, side: 'fp32' | 'int8') => r.latency.find((l) => l.threads === t)?.[side].p50Ms;
  const notFaster = (side: 'fp32' | 'int8') =>
    results.filter((r) => {
      const [a, b] = [p50(r, 1, side), p50(r, 2, side)];
      return a !== undefined && b !== undefined && b >= a;
    });
  const busy = others && others.wallS > 0 ? others.otherCpuS / others.wallS : undefined;
  if (busy !== undefined) {
    lines.push(
      `While this ran, other processes on the machine used ${others!.otherCpuS.toFixed(0)} CPU-seconds in ${others!.wallS.toFixed(0)} s (${pct(busy)} of one CPU on average; ${cpus().length} CPUs)${busy > 0.1 ? ': the figures carry that noise, most of all the 2-thread ones, whose spinning threads need both cores' : ''}.`,
      '',
    );
  }
  const int8Slow = notFaster('int8');
  if (int8Slow.length) {
    const fp32Slow = new Set(notFaster('fp32'));
    const fp32Gained = int8Slow.filter((r) => !fp32Slow.has(r));
    lines.push(
      `A second thread did not lower int8 latency for ${int8Slow.map((r) => `${r.short} (${ms(p50(r, 1, 'int8'))} → ${ms(p50(r, 2, 'int8'))})`).join(', ')} in this run${fp32Gained.length ? `, although it did lower fp32 latency for ${fp32Gained.map((r) => `${r.short} (${ms(p50(r, 1, 'fp32'))} → ${ms(p50(r, 2, 'fp32'))})`).join(', ')}` : ''}.`,
      '',
    );
  }
  // Rounds that disagree: the median round hides them, so name them.
  const scatter: string[] = [];
  for (const r of results) {
    for (const l of r.latency) {
      for (const side of ['fp32', 'int8'] as const) {
        const xs = l.rounds.map((x) => (side === 'fp32' ? x.fp32P50Ms : x.int8P50Ms));
        const lo = Math.min(...xs), hi = Math.max(...xs);
        if (xs.length > 1 && hi > 1.3 * lo) scatter.push(`${r.short} ${side}, ${l.threads} thread${l.threads > 1 ? 's' : ''} (${ms(lo)} to ${ms(hi)})`);
      }
    }
  }
  if (scatter.length) {
    lines.push(`Rounds disagreed by more than 30% (fastest to slowest round p50) for: ${scatter.join('; ')}. The tables show the median round; every round is listed under its table.`, '');
  }
  const resnet = results.find((r) => r.id === 'resnet18');
  const exported = join(MODELS, 'resnet18_torch.json');
  if (resnet?.accuracy.agreement !== undefined && existsSync(exported)) {
    try {
      const e = JSON.parse(readFileSync(exported, 'utf8')) as { distinct_predictions?: number; min_top1_top2_logit_margin?: number };
      if (e.min_top1_top2_logit_margin !== undefined) {
        lines.push(
          `ResNet18 has random fixed-seed weights (no pretrained download), so it has no accuracy to lose: its ${resnet.accuracy.samples} eval images fall into ${e.distinct_predictions ?? '?'} classes with top-1/top-2 logit margins as small as ${e.min_top1_top2_logit_margin} (bench/models/resnet18_torch.json), and top-1 agreement (${pct(resnet.accuracy.agreement)}) is a fragile measure there; the output SQNR (${resnet.accuracy.sqnrDb?.toFixed(1) ?? "—"} dB) is the steadier figure. It is here for latency and size.`,
          '',
        );
      }
    } catch {
      // the export report is optional context
    }
  }
  if (torch?.ok) {
    const slow = [...comparisons.entries()].filter(([, c]) => c.torchFp32JitP50Ms !== undefined && c.torchFp32EagerP50Ms > 2 * c.torchFp32JitP50Ms);
    if (slow.length) {
      lines.push(
        `PyTorch's eager fp32 latency is the Debian torch ${torch.report.torch} build's batch-1 path, which runs small 3×3 convolutions as im2col + libblas GEMM (the process loaded ${torch.report.blas.map((b) => b.split('/').pop()).join(', ') || 'no BLAS it could name'}): ${slow.map(([id, c]) => `${results.find((r) => r.id === id)?.short ?? id} ${ms(c.torchFp32EagerP50Ms)} eager vs ${ms(c.torchFp32JitP50Ms)} as optimized TorchScript`).join('; ')}. Both are reported as measured; the latency comparisons above are int8 against int8.`,
        '',
      );
    }
    lines.push(
      `Timing differs in method: edgeq times \`session.run\` through onnxruntime-node (the N-API call and the promise included) on one image, ${runs} runs; PyTorch times the module call in Python with \`time.perf_counter\` over 200 different test images. Both batch 1, 1 thread, after warm-up.`,
      '',
    );
  }
  return lines.length ? ['### Reading these numbers', '', ...lines] : [];
}

function render(results: Result[], facts: Record<string, string>, torch: TorchRun | undefined, comparisons: Map<string, Comparison>, load: { before: number[]; after: number[] }, others: Others | undefined, command: string, torchOrder: string): string {
  const la = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(' ');
  const lines = [
    '## fp32 vs int8: size, accuracy, latency; beside PyTorch',
    '',
    `Produced by \`${command}\` (${new Date().toISOString().slice(0, 10)}); also writes bench/results.json and bench/results.svg.`,
    '',
    `Latency: batch 1 (the first sample of the model's data file), each measurement in its own Node process (a fresh ONNX Runtime session: ${warmup} warm-up runs, then ${runs} timed runs of \`session.run\`), fp32 and int8 alternating over ${rounds} round${rounds > 1 ? 's' : ''}; a table shows the round with the median p50, and the speedup (fp32 p50 / int8 p50) is the median of the rounds' ratios. One ONNX Runtime session alive at a time; ORT's default intra-op thread spinning. ${torchOrder}`,
    '',
    '### Machine',
    '',
    ...Object.entries(facts).map(([k, v]) => `- ${k}: ${v}`),
    `- load average (1, 5, 15 min): ${la(load.before)} at the start, ${la(load.after)} at the end (the end includes this benchmark's own load)`,
    ...(others ? [`- CPU time other processes used during the run: ${others.otherCpuS.toFixed(1)} s in ${others.wallS.toFixed(0)} s wall`] : []),
    '',
    '![fp32 vs int8: latency and size per model](results.svg)',
    '',
  ];
  for (const r of results) {
    if (!ran(r)) {
      lines.push(`### ${r.name}`, '', `Skipped: ${r.skipped}.`, '');
      continue;
    }
    lines.push(...modelSection(r, torch, comparisons.get(r.id)));
  }
  lines.push(...reading(results.filter(ran), facts, torch, comparisons, others));
  return lines.join('\n');
}

function chart(results: ModelResult[], facts: Record<string, string>): string {
  const rows: BarRow[] = results.map((r) => {
    const lat = r.latency.map((l) => ({
      label: `${l.threads} thread${l.threads > 1 ? 's' : ''}`,
      values: [l.fp32.p50Ms, l.int8.p50Ms],
      texts: [ms(l.fp32.p50Ms), `${ms(l.int8.p50Ms)} (${l.speedup >= 1 ? `${times(l.speedup)} faster` : `${times(1 / l.speedup)} slower`})`],
    }));
    const s = r.quantize.sizeBytes;
    return {
      title: r.short,
      panels: [
        { title: 'latency p50, batch 1 (ms)', groups: lat, format: sig3 },
        { title: 'file size (KiB)', groups: [{ label: '.onnx', values: [s.fp32 / 1024, s.int8 / 1024], texts: [kib(s.fp32), `${kib(s.int8)} (${pct(s.int8 / s.fp32)})`] }] },
      ],
    };
  });
  return renderBarsSvg({
    title: `edgeq: fp32 vs int8 on ${facts.cpu}`,
    subtitle: `${facts.isa}; ${facts.onnxruntime}; ${new Date().toISOString().slice(0, 10)}`,
    series: [
      { name: 'fp32', color: '#9aa5b1' },
      { name: 'int8 (edgeq)', color: '#e15759' },
    ],
    rows,
    footnote: `npm run bench: p50 of ${runs} runs, median of ${rounds} alternating rounds (speedup: median of the rounds' fp32/int8 ratios), one session at a time. Each panel has its own scale.`,
  });
}

/** The JSON copy: paths relative to the checkout, so the committed file does not name this machine's folders. */
function portable(r: Result): unknown {
  if (!ran(r)) return r;
  const lat = (b: BenchResult) => ({ ...b, model: rel(b.model) });
  return {
    ...r,
    fp32Path: rel(r.fp32Path),
    int8Path: rel(r.int8Path),
    quantize: { ...r.quantize, outPath: rel(r.quantize.outPath) },
    latency: r.latency.map((l) => ({ ...l, fp32: lat(l.fp32), int8: lat(l.int8) })),
  };
}

async function main(): Promise<void> {
  mkdirSync(MODELS, { recursive: true });
  const before = loadavg();
  const t0 = performance.now();
  const ticks0 = cpuTicks();
  const facts = machine();
  const command = `npm run bench${args.length ? ` -- ${args.join(' ')}` : ''}`;
  const needTorch = !noTorch && (wanted('fixture') || wanted('mobilenet'));
  let torch: TorchRun | undefined;
  let torchOrder = 'PyTorch was not run (`--no-torch` or no fixture selected).';
  if (needTorch) {
    torch = await runTorch();
    torchOrder = torch.ok
      ? `PyTorch (\`${PYTHON} tools/torch_bench.py --out bench/torch.json\`, ${torch.seconds} s) ran first in the same \`npm run bench\`, before edgeq quantized and timed anything; nothing else of the benchmark ran alongside it.`
      : `PyTorch was not run: ${torch.reason}.`;
    if (!torch.ok) log(`PyTorch skipped: ${torch.reason}`);
  }
  const results: Result[] = [];
  for (const fx of FIXTURES) if (wanted(fx.id)) results.push(await benchFixture(fx));
  if (wanted('convstack')) results.push(await benchConvStack());
  if (wanted('resnet18')) results.push(await benchResnet());
  const after = loadavg();
  const ticks1 = cpuTicks();
  const others: Others | undefined =
    ticks0 && ticks1 ? { wallS: (performance.now() - t0) / 1000, otherCpuS: Math.max(0, ticks1.busy - ticks0.busy - (ticks1.self - ticks0.self)) / 100 } : undefined;

  const comparisons = new Map<string, Comparison>();
  if (torch?.ok) {
    for (const r of results.filter(ran)) {
      const t = r.torchName ? torch.report.networks[r.torchName] : undefined;
      const c = t ? compare(r, t) : undefined;
      if (c) comparisons.set(r.id, c);
    }
  }
  const md = render(results, facts, torch, comparisons, { before, after }, others, command, torchOrder);
  const path = join(ROOT, 'bench/RESULTS.md');
  writeSection(path, 'bench', md);
  const svg = join(ROOT, 'bench/results.svg');
  writeFileSync(svg, chart(results.filter(ran), facts));
  const json = {
    generated: new Date().toISOString(),
    command,
    machine: facts,
    loadavg: { before, after },
    otherProcesses: others ?? null,
    method: { batch: 1, rounds, runs, warmup, processPerMeasurement: true, spinning: 'ORT default (on)', oneSessionAtATime: true },
    torch: torch ? (torch.ok ? { ran: true, order: 'before edgeq', seconds: torch.seconds, json: rel(TORCH_JSON), version: torch.report.torch } : { ran: false, reason: torch.reason }) : { ran: false, reason: 'not requested' },
    results: results.map(portable),
    comparisons: Object.fromEntries(comparisons),
  };
  writeFileSync(join(ROOT, 'bench/results.json'), JSON.stringify(json, null, 2) + '\n');
  log(`wrote ${rel(path)}, bench/results.json and ${rel(svg)}`);
}

await main();
