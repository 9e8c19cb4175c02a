/** Latency measurement of one model in ONNX Runtime: one session at a time, warm-up first. */
import { performance } from 'node:perf_hooks';
import { openSession, ort } from './runtime.js';

export interface LatencyStats {
  runs: number;
  meanMs: number;
  minMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** Samples per second at this batch size. */
  throughput: number;
  loadMs: number;
}

export interface LatencyOptions {
  threads: number;
  runs: number;
  warmup: number;
  /** Spinning intra-op threads (ORT's default) or not. */
  spin?: boolean;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

export function latencyStats(times: number[], batch: number, loadMs: number): LatencyStats {
  const sorted = [...times].sort((a, b) => a - b);
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    runs: times.length,
    meanMs: r(mean),
    minMs: r(sorted[0]),
    p50Ms: r(percentile(sorted, 50)),
    p90Ms: r(percentile(sorted, 90)),
    p99Ms: r(percentile(sorted, 99)),
    throughput: r((1000 * batch) / mean),
    loadMs: r(loadMs),
  };
}

export async function measureLatency(model: string | Uint8Array, feeds: Record<string, ort.Tensor>, opts: LatencyOptions): Promise<LatencyStats> {
  const t0 = performance.now();
  const session = await openSession(model, { threads: opts.threads, spin: opts.spin });
  const loadMs = performance.now() - t0;
  try {
    for (let i = 0; i < opts.warmup; i++) await session.run(feeds);
    const times: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      const s = performance.now();
      await session.run(feeds);
      times.push(performance.now() - s);
    }
    const batch = Number(Object.values(feeds)[0]?.dims[0] ?? 1);
    return latencyStats(times, batch, loadMs);
  } finally {
    await session.release();
  }
}
