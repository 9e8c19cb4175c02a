/**
 * The endpoint's counters in the Prometheus text exposition format (0.0.4), so an existing
 * scraper can read them. Label sets stay bounded: model labels are only ever names the model
 * source knows, and error codes are a fixed set.
 */

/** Latency buckets, seconds: 0.5 ms to 5 s. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function labels(pairs: Array<[string, string]>): string {
  return `{${pairs.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`;
}

function num(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

interface Histogram {
  model: string;
  version: string;
  counts: number[];
  sum: number;
  count: number;
}

export class Metrics {
  private readonly requests = new Map<string, { model: string; version: string; code: string; n: number }>();
  private readonly errors = new Map<string, number>();
  private readonly latency = new Map<string, Histogram>();

  /** One inference request that reached a known model, by HTTP status. */
  request(model: string, version: number, status: number): void {
    const key = `${model}\0${version}\0${status}`;
    const r = this.requests.get(key);
    if (r) r.n++;
    else this.requests.set(key, { model, version: String(version), code: String(status), n: 1 });
  }

  /** One error reply, by error code. */
  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  /** One successful inference's run time. */
  observe(model: string, version: number, seconds: number): void {
    const key = `${model}\0${version}`;
    let h = this.latency.get(key);
    if (!h) {
      h = { model, version: String(version), counts: LATENCY_BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.latency.set(key, h);
    }
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) if (seconds <= LATENCY_BUCKETS[i]) h.counts[i]++;
    h.sum += seconds;
    h.count++;
  }

  render(capture?: Record<string, { samples: number; bytes: number }>): string {
    const out: string[] = [];
    const family = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);

    family('edgeq_requests_total', 'counter', 'Inference requests that reached a known model, by model, version and HTTP status.');
    for (const r of this.requests.values()) out.push(`edgeq_requests_total${labels([['model', r.model], ['version', r.version], ['code', r.code]])} ${r.n}`);

    family('edgeq_request_errors_total', 'counter', 'Error replies on any route, by error code.');
    for (const [code, n] of this.errors) out.push(`edgeq_request_errors_total${labels([['code', code]])} ${n}`);

    family('edgeq_inference_latency_seconds', 'histogram', 'ONNX Runtime run time of successful inference requests.');
    for (const h of this.latency.values()) {
      const base: Array<[string, string]> = [['model', h.model], ['version', h.version]];
      LATENCY_BUCKETS.forEach((b, i) => out.push(`edgeq_inference_latency_seconds_bucket${labels([...base, ['le', num(b)]])} ${h.counts[i]}`));
      out.push(`edgeq_inference_latency_seconds_bucket${labels([...base, ['le', '+Inf']])} ${h.count}`);
      out.push(`edgeq_inference_latency_seconds_sum${labels(base)} ${num(h.sum)}`);
      out.push(`edgeq_inference_latency_seconds_count${labels(base)} ${h.count}`);
    }

    family('edgeq_captured_samples', 'gauge', 'Samples held by the capture store, by model.');
    for (const [model, s] of Object.entries(capture ?? {})) out.push(`edgeq_captured_samples${labels([['model', model]])} ${num(Number(s.samples))}`);
    family('edgeq_captured_bytes', 'gauge', 'Bytes held by the capture store, by model.');
    for (const [model, s] of Object.entries(capture ?? {})) out.push(`edgeq_captured_bytes${labels([['model', model]])} ${num(Number(s.bytes))}`);
    return out.join('\n') + '\n';
  }
}
