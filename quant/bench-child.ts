/**
 * The process `benchInChild` starts: it benchmarks one model and exits, so the peak resident
 * set it reports belongs to the benchmark alone, not to whoever asked for it.
 *
 * Input: one JSON BenchJob as argv[2], or on stdin. Output on stdout, one JSON object per line:
 * `{"progress": {"stage", "done", "total"}}` lines when the job asks for them, then exactly one
 * `{"ok": true, "result": ChildResult}` or `{"ok": false, "error": {"code", "message"}}`.
 */
import { performance } from 'node:perf_hooks';
import { latencyStats } from './bench.js';
import { buildFeeds, sessionInputs } from './bench-inputs.js';
import type { BenchJob, ChildResult } from './bench-process.js';
import { EdgeqError, isEdgeqError } from './errors.js';
import { openSession, ort } from './runtime.js';

const maxRssBytes = () => process.resourceUsage().maxRSS * 1024;

function emit(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

async function readJob(): Promise<BenchJob> {
  let text = process.argv[2];
  if (text === undefined) {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    text = Buffer.concat(chunks).toString('utf8');
  }
  try {
    return JSON.parse(text) as BenchJob;
  } catch (e) {
    throw new EdgeqError('E_ARGUMENT', `the benchmark process got no valid job (${(e as Error).message})`, { cause: e });
  }
}

async function run(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>): Promise<void> {
  let out: ort.InferenceSession.OnnxValueMapType;
  try {
    out = await session.run(feeds);
  } catch (e) {
    throw new EdgeqError('E_RUNTIME', `ONNX Runtime failed running the model: ${(e as Error).message.split('\n')[0]}`, { cause: e });
  }
  for (const t of Object.values(out)) (t as ort.Tensor).dispose?.();
}

async function bench(job: BenchJob): Promise<ChildResult> {
  const progress = (stage: 'warmup' | 'run', done: number, total: number) => {
    if (job.progress) emit({ progress: { stage, done, total } });
  };
  const baseRssBytes = maxRssBytes();
  const t0 = performance.now();
  const session = await openSession(job.model, { threads: job.threads, spin: job.spin });
  const loadMs = performance.now() - t0;
  try {
    const { feeds, inputs, batch } = buildFeeds(sessionInputs(session), {
      batch: job.batch,
      data: new Map(job.data ?? []),
      shapes: new Map(job.shapes ?? []),
    });
    // Progress at most every 100 ms, and never inside a timed run.
    let last = 0;
    const tick = (stage: 'warmup' | 'run', done: number, total: number) => {
      const now = performance.now();
      if (now - last >= 100 || done === total) {
        last = now;
        progress(stage, done, total);
      }
    };
    for (let i = 0; i < job.warmup; i++) {
      await run(session, feeds);
      tick('warmup', i + 1, job.warmup);
    }
    const times: number[] = [];
    for (let i = 0; i < job.runs; i++) {
      const s = performance.now();
      await run(session, feeds);
      times.push(performance.now() - s);
      tick('run', i + 1, job.runs);
    }
    return {
      ...latencyStats(times, batch, loadMs),
      batch,
      threads: job.threads,
      warmup: job.warmup,
      spin: job.spin,
      peakRssBytes: maxRssBytes(),
      baseRssBytes,
      inputs,
    };
  } finally {
    await session.release();
  }
}

let reply: { ok: true; result: ChildResult } | { ok: false; error: { code: string; message: string } };
try {
  reply = { ok: true, result: await bench(await readJob()) };
} catch (e) {
  reply = { ok: false, error: isEdgeqError(e) ? e.toJSON() : { code: 'E_RUNTIME', message: `benchmark failed: ${e instanceof Error ? e.message : String(e)}` } };
}
// Exit once the line is out, whatever native threads are still winding down.
process.stdout.write(JSON.stringify(reply) + '\n', () => process.exit(reply.ok ? 0 : 1));
