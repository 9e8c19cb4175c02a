/**
 * Benchmarks a model in a child process (dist/quant/bench-child.js): the peak resident set it
 * reports is the benchmark's own, not the caller's, and a crash in ONNX Runtime cannot take the
 * caller down.
 */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TensorProto_DataLocation } from 'onnx-buf';
import type { LatencyStats } from './bench.js';
import type { BenchInput } from './bench-inputs.js';
import { EdgeqError, fsError, type ErrorCode } from './errors.js';
import { allTensors, readModel } from './onnx/model.js';

export type { BenchInput } from './bench-inputs.js';

export interface BenchOptions {
  model: string;
  /** Samples per run. Default: the model's fixed batch, else 1. */
  batch?: number;
  /** ONNX Runtime intra-op threads (default 1). */
  threads?: number;
  /** Timed runs (default 100). */
  runs?: number;
  /** Untimed runs first (default 10). */
  warmup?: number;
  /** .npy file per input name ('' for the only input); inputs without one get random data. */
  data?: ReadonlyMap<string, string>;
  /** Full shape per input name ('' for the only input): sizes for dynamic dimensions. */
  shapes?: ReadonlyMap<string, readonly number[]>;
  /** Spinning intra-op threads (ORT's default, true) or not. */
  spin?: boolean;
  /** Called as warm-up and timed runs complete (at most every 100 ms). */
  onProgress?: (stage: 'warmup' | 'run', done: number, total: number) => void;
}

/** What the child process measures. */
export interface ChildResult extends LatencyStats {
  batch: number;
  threads: number;
  warmup: number;
  spin: boolean;
  /** Peak resident set of the benchmark process (Node, ONNX Runtime, model, inputs, runs). */
  peakRssBytes: number;
  /** Its peak resident set before the model was loaded: Node and ONNX Runtime alone. */
  baseRssBytes: number;
  inputs: BenchInput[];
}

export interface BenchResult extends ChildResult {
  model: string;
  /** The .onnx file plus any external data files it references. */
  sizeBytes: number;
}

/** The job the parent sends the child (JSON). */
export interface BenchJob {
  model: string;
  batch?: number;
  threads: number;
  runs: number;
  warmup: number;
  spin: boolean;
  data?: Array<[string, string]>;
  shapes?: Array<[string, number[]]>;
  progress?: boolean;
}

const CHILD = fileURLToPath(new URL('./bench-child.js', import.meta.url));
const STDERR_TAIL = 4000;

function checkCount(what: string, v: number | undefined, min: number): void {
  if (v === undefined) return;
  if (!Number.isSafeInteger(v) || v < min) throw new EdgeqError('E_ARGUMENT', `${what} must be ${min === 0 ? 'a whole number, 0 or more' : 'a positive integer'}, got ${v}`);
}

/** Size on disk of a model and the external data files it references. Validates the model. */
export function modelSizeBytes(path: string): number {
  const model = readModel(path, { externalData: 'keep' });
  let size: number;
  try {
    size = statSync(path).size;
  } catch (e) {
    throw fsError(e, path);
  }
  const files = new Set<string>();
  for (const t of allTensors(model.graph!)) {
    if (t.dataLocation !== TensorProto_DataLocation.EXTERNAL) continue;
    const location = t.externalData.find((e) => e.key === 'location')?.value;
    if (location) files.add(resolve(dirname(resolve(path)), location));
  }
  for (const f of files) {
    try {
      size += statSync(f).size;
    } catch (e) {
      throw fsError(e, f);
    }
  }
  return size;
}

/**
 * Benchmarks `opts.model` in a fresh Node process. Errors the child reports come back as
 * EdgeqError with the child's code; a child that dies without reporting gives E_RUNTIME with
 * the end of its stderr.
 */
export async function benchInChild(opts: BenchOptions): Promise<BenchResult> {
  checkCount('batch', opts.batch, 1);
  checkCount('threads', opts.threads, 1);
  checkCount('runs', opts.runs, 1);
  checkCount('warmup', opts.warmup, 0);
  for (const [name, shape] of opts.shapes ?? []) {
    if (shape.some((d) => !Number.isSafeInteger(d) || d < 1)) throw new EdgeqError('E_ARGUMENT', `shape of ${name || 'the input'} must be positive integers, got ${shape.join(',')}`);
  }
  const sizeBytes = modelSizeBytes(opts.model);
  const job: BenchJob = {
    model: opts.model,
    batch: opts.batch,
    threads: opts.threads ?? 1,
    runs: opts.runs ?? 100,
    warmup: opts.warmup ?? 10,
    spin: opts.spin ?? true,
    data: opts.data ? [...opts.data] : undefined,
    shapes: opts.shapes ? [...opts.shapes].map(([k, v]) => [k, [...v]]) : undefined,
    progress: opts.onProgress !== undefined,
  };
  const child = await runChild(job, opts.onProgress);
  return { model: opts.model, sizeBytes, ...child };
}

function runChild(job: BenchJob, onProgress: BenchOptions['onProgress']): Promise<ChildResult> {
  return new Promise((resolvePromise, reject) => {
    // Same working directory: relative paths in the job mean what they meant to the caller.
    const child = spawn(process.execPath, [CHILD], { stdio: ['pipe', 'pipe', 'pipe'] });
    let settled = false;
    let stderr = '';
    let pending = '';
    let reply: { ok: true; result: ChildResult } | { ok: false; error: { code: ErrorCode; message: string } } | undefined;
    const fail = (e: EdgeqError) => {
      if (settled) return;
      settled = true;
      reject(e);
    };
    const line = (text: string) => {
      if (!text.trim()) return;
      let msg: unknown;
      try {
        msg = JSON.parse(text);
      } catch {
        stderr = (stderr + text + '\n').slice(-STDERR_TAIL); // stray output: keep it for the error message
        return;
      }
      const m = msg as { progress?: { stage: 'warmup' | 'run'; done: number; total: number }; ok?: boolean };
      if (m.progress) onProgress?.(m.progress.stage, m.progress.done, m.progress.total);
      else if (typeof m.ok === 'boolean') reply = msg as typeof reply;
    };
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        line(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-STDERR_TAIL);
    });
    child.on('error', (e) => fail(new EdgeqError('E_RUNTIME', `cannot start the benchmark process (${process.execPath}): ${e.message}`, { cause: e })));
    // The job goes on stdin: no argv length limit, nothing in `ps`. A child that dies first
    // makes the write fail with EPIPE; 'close' reports that.
    child.stdin.on('error', () => {});
    child.stdin.end(JSON.stringify(job));
    child.on('close', (code, signal) => {
      line(pending);
      if (settled) return;
      if (reply?.ok === true) {
        settled = true;
        resolvePromise(reply.result);
        return;
      }
      if (reply?.ok === false) {
        fail(new EdgeqError(reply.error.code, reply.error.message));
        return;
      }
      const how = signal ? `was killed by ${signal}${signal === 'SIGKILL' ? ' (out of memory?)' : ''}` : `exited with code ${code}`;
      const tail = stderr.trim();
      fail(new EdgeqError('E_RUNTIME', `the benchmark process ${how} without a result${tail ? `: ${tail}` : ''}`));
    });
  });
}
