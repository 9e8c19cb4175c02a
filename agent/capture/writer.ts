/**
 * Capture off the inference path. offer() copies a request's inputs into a bounded in-memory
 * queue and returns; every flushMs the queue is written with one Store.offerSamples
 * transaction per model, where the model's policy (rate, dedup, reservoir caps) decides what is
 * kept. offer() never throws: a request that cannot be captured is reported to onError and
 * counted, and never stored.
 */
import { EdgeqError } from '../../quant/errors.js';
import { checkSample, checkSource, type ModelVersion, type OfferedSample, type SampleTensor, type Store } from '../store/index.js';
import { batchSize, splitSamples, toSampleTensor, type TensorLike } from './tensors.js';

export interface CaptureWriterOptions {
  /** Delay between an offer and the write of the queue (default 50 ms). */
  flushMs?: number;
  /** Samples the queue holds at most (default 256); beyond, the newest are dropped. */
  maxQueue?: number;
  /** Bytes the queue holds at most (default 64 MiB); beyond, the newest are dropped. */
  maxQueueBytes?: number;
  /** The random source of the store's sampling (default Math.random). */
  rand?: () => number;
  /** Called with each error (validation refusals and store failures); default: one JSON line on stderr. */
  onError?: (e: unknown) => void;
}

export interface CaptureWriterStats {
  /** Samples waiting for the next flush. */
  queued: number;
  /** Samples dropped because the queue was full or the writer closed. */
  dropped: number;
  /** Samples handed to the store (whatever its policy then decided). */
  written: number;
  /** Samples refused because they do not match the model. */
  refused: number;
  /** Samples lost because the store failed to write them. */
  failed: number;
}

interface Pending {
  model: string;
  source: string;
  at: number;
  samples: SampleTensor[][];
}

function defaultOnError(e: unknown): void {
  const err = e instanceof EdgeqError ? e.toJSON() : { code: 'E_INTERNAL', message: String((e as Error)?.message ?? e) };
  process.stderr.write(`${JSON.stringify({ level: 'warn', event: 'capture.error', ...err })}\n`);
}

export class CaptureWriter {
  private readonly store: Store;
  private readonly flushMs: number;
  private readonly maxQueue: number;
  private readonly maxQueueBytes: number;
  private readonly rand: () => number;
  private readonly onError: (e: unknown) => void;
  private queue: Pending[] = [];
  private queuedSamples = 0;
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private counts = { dropped: 0, written: 0, refused: 0, failed: 0 };
  /** Refusals found at offer() time, counted in the store at the next flush. */
  private refusedByModel = new Map<string, number>();

  constructor(store: Store, opts: CaptureWriterOptions = {}) {
    const flushMs = opts.flushMs ?? 50;
    const maxQueue = opts.maxQueue ?? 256;
    const maxQueueBytes = opts.maxQueueBytes ?? 64 * 1024 * 1024;
    if (!Number.isFinite(flushMs) || flushMs < 0) throw new EdgeqError('E_ARGUMENT', `flushMs must be 0 or more milliseconds, got ${flushMs}`);
    if (!Number.isSafeInteger(maxQueue) || maxQueue < 1) throw new EdgeqError('E_ARGUMENT', `maxQueue must be a whole number of samples, 1 or more, got ${maxQueue}`);
    if (!Number.isSafeInteger(maxQueueBytes) || maxQueueBytes < 1) throw new EdgeqError('E_ARGUMENT', `maxQueueBytes must be a whole number of bytes, 1 or more, got ${maxQueueBytes}`);
    this.store = store;
    this.flushMs = flushMs;
    this.maxQueue = maxQueue;
    this.maxQueueBytes = maxQueueBytes;
    this.rand = opts.rand ?? Math.random;
    this.onError = opts.onError ?? defaultOnError;
  }

  /**
   * Queues one request's inputs for capture: each tensor [N, …] is split along axis 0 into N
   * samples. The bytes are copied, so the caller may reuse its buffers. Never throws.
   */
  offer(model: string, tensors: SampleTensor[], source: string): void {
    let n = 0;
    try {
      n = batchSize(tensors);
      checkSource(`model "${model}"`, source);
      if (n === 0) return;
      if (this.closed) {
        this.counts.dropped += n;
        return;
      }
      const bytesPer = tensors.reduce((a, t) => a + (t.data?.byteLength ?? 0), 0) / n;
      const room = Math.min(this.maxQueue - this.queuedSamples, bytesPer > 0 ? Math.floor((this.maxQueueBytes - this.queuedBytes) / bytesPer) : Infinity);
      const take = Math.max(0, Math.min(n, room));
      const samples = take > 0 ? splitSamples(tensors, take) : [];
      this.counts.dropped += n - take;
      if (take === 0) return;
      this.queue.push({ model, source, at: Date.now(), samples });
      this.queuedSamples += take;
      this.queuedBytes += take * bytesPer;
      this.arm();
    } catch (e) {
      this.refuse(model, Math.max(n, 1), e);
    }
  }

  /** offer() for a feeds object as given to InferenceSession.run ({name: ort.Tensor}). */
  offerFeeds(model: string, feeds: Readonly<Record<string, TensorLike>>, source: string): void {
    let tensors: SampleTensor[];
    try {
      tensors = Object.entries(feeds).map(([name, t]) => toSampleTensor(name, t));
    } catch (e) {
      this.refuse(model, 1, e);
      return;
    }
    this.offer(model, tensors, source);
  }

  stats(): CaptureWriterStats {
    return { queued: this.queuedSamples, ...this.counts };
  }

  /** Writes everything queued now: one transaction per model. */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const pending = this.queue;
    const refused = this.refusedByModel;
    this.queue = [];
    this.refusedByModel = new Map();
    this.queuedSamples = 0;
    this.queuedBytes = 0;
    const byModel = new Map<string, Pending[]>();
    for (const p of pending) {
      const list = byModel.get(p.model);
      if (list) list.push(p);
      else byModel.set(p.model, [p]);
    }
    for (const model of new Set([...refused.keys(), ...byModel.keys()])) this.write(model, byModel.get(model) ?? [], refused.get(model) ?? 0);
  }

  /** Flushes what is queued; later offers are dropped. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }

  private write(model: string, entries: Pending[], refusedEarlier: number): void {
    let refused = refusedEarlier;
    const ok: OfferedSample[] = [];
    let target: ModelVersion;
    try {
      target = this.store.captureTarget(model);
    } catch (e) {
      const n = entries.reduce((a, p) => a + p.samples.length, 0);
      if (n > 0) {
        // An unknown model refuses its samples; anything else is the store failing.
        if (e instanceof EdgeqError && e.code === 'E_MODEL_UNKNOWN') this.counts.refused += n;
        else this.counts.failed += n;
        this.report(e);
      }
      return;
    }
    // Check request by request, so one bad request does not take the others down with it.
    for (const p of entries) {
      try {
        p.samples.forEach((s, i) => checkSample(`model "${model}" v${target.version}, request from ${p.source}, sample ${i + 1} of ${p.samples.length}`, target.inputs, s));
        for (const tensors of p.samples) ok.push({ tensors, source: p.source, at: p.at });
      } catch (e) {
        refused += p.samples.length;
        this.counts.refused += p.samples.length;
        this.report(e);
      }
    }
    try {
      if (refused > 0) this.store.recordRefused(model, refused);
    } catch (e) {
      this.report(e);
    }
    if (ok.length === 0) return;
    try {
      this.store.offerSamples(model, ok, this.rand);
      this.counts.written += ok.length;
    } catch (e) {
      this.counts.failed += ok.length;
      this.report(e);
    }
  }

  private refuse(model: string, n: number, e: unknown): void {
    this.counts.refused += n;
    this.refusedByModel.set(model, (this.refusedByModel.get(model) ?? 0) + n);
    this.report(e);
    this.arm();
  }

  private arm(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, this.flushMs);
    this.timer.unref();
  }

  private report(e: unknown): void {
    try {
      this.onError(e);
    } catch {
      // An error handler that throws must not break capture.
    }
  }
}
