/**
 * ORT sessions of served models: one per (model, version), opened on first use and cached.
 *
 * When the source names a new version, requests go on to the version already loaded while the
 * new one loads and warms up; then the new one becomes active, and the old one is released once
 * the last request using it has let go (a reference count). A version that fails to load is
 * retried after RETRY_MS; until then the old version (if any) keeps serving.
 */
import { EdgeqError, isEdgeqError } from '../../quant/errors.js';
import { openSession, ort } from '../../quant/runtime.js';
import { inputSpecs } from './tensors.js';
import type { ServedModel } from './types.js';

const RETRY_MS = 30_000;

type Log = (event: Record<string, unknown>) => void;

interface Entry {
  key: string;
  model: ServedModel;
  state: 'loading' | 'ready' | 'failed';
  loading: Promise<void>;
  session?: ort.InferenceSession;
  error?: EdgeqError;
  failedAt?: number;
  refs: number;
  retired: boolean;
  released: boolean;
}

/** A session held for one request; release() exactly once when done with it (extra calls are ignored). */
export interface Lease {
  model: ServedModel;
  session: ort.InferenceSession;
  release(): void;
}

function keyOf(m: ServedModel): string {
  return `${m.name}\0${m.version}\0${m.path}`;
}

/** Zeros for every input, dynamic dims as 1; undefined when an input type is not a plain numeric tensor. */
function zeroFeeds(session: ort.InferenceSession): Record<string, ort.Tensor> | undefined {
  const feeds: Record<string, ort.Tensor> = {};
  for (const spec of inputSpecs(session)) {
    const dims = spec.shape.map((d) => (typeof d === 'number' && d > 0 ? d : 1));
    const n = dims.reduce((a, b) => a * b, 1);
    switch (spec.type) {
      case 'float32': feeds[spec.name] = new ort.Tensor('float32', new Float32Array(n), dims); break;
      case 'float64': feeds[spec.name] = new ort.Tensor('float64', new Float64Array(n), dims); break;
      case 'uint8': feeds[spec.name] = new ort.Tensor('uint8', new Uint8Array(n), dims); break;
      case 'int8': feeds[spec.name] = new ort.Tensor('int8', new Int8Array(n), dims); break;
      case 'int32': feeds[spec.name] = new ort.Tensor('int32', new Int32Array(n), dims); break;
      case 'int64': feeds[spec.name] = new ort.Tensor('int64', new BigInt64Array(n), dims); break;
      default: return undefined;
    }
  }
  return feeds;
}

export class SessionPool {
  private readonly entries = new Map<string, Entry>();
  private readonly active = new Map<string, Entry>();
  private readonly wanted = new Map<string, string>();
  private closed = false;

  constructor(private readonly threads: number | undefined, private readonly log: Log) {}

  /** A session for `m`, or for the version of m.name still active while m loads. */
  async acquire(m: ServedModel): Promise<Lease> {
    if (this.closed) throw new EdgeqError('E_UNAVAILABLE', 'the server is shutting down');
    const key = keyOf(m);
    this.wanted.set(m.name, key);
    const cur = this.active.get(m.name);
    if (cur?.key === key) return this.lease(cur);
    let entry = this.entries.get(key);
    if (entry?.state === 'failed' && Date.now() - entry.failedAt! >= RETRY_MS) {
      this.entries.delete(key);
      entry = undefined;
    }
    entry ??= this.load(m);
    if (entry.state === 'ready') {
      this.activate(entry);
      return this.lease(entry);
    }
    if (cur) return this.lease(cur);
    if (entry.state === 'failed') throw entry.error!;
    await entry.loading;
    // (the state changed while we waited; TypeScript's narrowing does not know)
    if ((entry.state as Entry['state']) === 'failed') throw entry.error!;
    // Loaded but since superseded or released: take whatever is active now.
    if (entry.released) {
      const now = this.active.get(m.name);
      if (!now) throw new EdgeqError('E_UNAVAILABLE', `model ${m.name} was unloaded while this request waited for it`);
      return this.lease(now);
    }
    return this.lease(entry);
  }

  /** The model is gone from the source: stop serving it once in-flight requests finish. */
  forget(name: string): void {
    this.wanted.delete(name);
    const cur = this.active.get(name);
    if (!cur) return;
    this.active.delete(name);
    cur.retired = true;
    this.maybeRelease(cur);
  }

  /** Versions with a live session, by model name. */
  loaded(): Map<string, number> {
    return new Map([...this.active].map(([name, e]) => [name, e.model.version]));
  }

  /** Releases every session; call once no request holds a lease. Sessions still loading are released when they finish. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.entries.values()];
    this.active.clear();
    for (const e of all) e.retired = true;
    await Promise.all(all.map((e) => e.loading));
    for (const e of all) this.maybeRelease(e);
  }

  private load(m: ServedModel): Entry {
    const entry: Entry = { key: keyOf(m), model: { ...m }, state: 'loading', loading: Promise.resolve(), refs: 0, retired: false, released: false };
    this.entries.set(entry.key, entry);
    entry.loading = (async () => {
      const t0 = performance.now();
      try {
        const session = await openSession(m.path, { threads: this.threads, spin: false });
        let warmed = false;
        const feeds = zeroFeeds(session);
        if (feeds) {
          try {
            const out = await session.run(feeds);
            for (const t of Object.values(out)) (t as ort.Tensor).dispose?.();
            warmed = true;
          } catch (e) {
            this.log({ event: 'model_warmup_failed', model: m.name, version: m.version, message: String((e as Error).message).split('\n')[0] });
          }
        }
        entry.session = session;
        entry.state = 'ready';
        this.log({ event: 'model_loaded', model: m.name, version: m.version, kind: m.kind, warmed, ms: Math.round(performance.now() - t0) });
      } catch (e) {
        entry.state = 'failed';
        entry.failedAt = Date.now();
        entry.error = isEdgeqError(e) ? e : new EdgeqError('E_MODEL_INVALID', `cannot load model ${m.name} version ${m.version}: ${String((e as Error)?.message ?? e)}`, { cause: e });
        this.log({ event: 'model_load_failed', model: m.name, version: m.version, code: entry.error.code, message: entry.error.message });
        return;
      }
      if (this.closed) {
        entry.retired = true;
        this.maybeRelease(entry);
      } else if (this.wanted.get(m.name) === entry.key) this.activate(entry);
      else {
        // Superseded while loading (the source moved on). Requests already waiting for it resume
        // before this runs and take their leases; then it goes.
        entry.retired = true;
        setImmediate(() => this.maybeRelease(entry));
      }
    })();
    return entry;
  }

  private activate(entry: Entry): void {
    const old = this.active.get(entry.model.name);
    if (old === entry) return;
    entry.retired = false;
    this.active.set(entry.model.name, entry);
    if (old) {
      old.retired = true;
      this.log({ event: 'model_switched', model: entry.model.name, from: old.model.version, to: entry.model.version });
      this.maybeRelease(old);
    }
  }

  private lease(entry: Entry): Lease {
    entry.refs++;
    let done = false;
    return {
      model: { ...entry.model },
      session: entry.session!,
      release: () => {
        if (done) return;
        done = true;
        entry.refs--;
        this.maybeRelease(entry);
      },
    };
  }

  private maybeRelease(entry: Entry): void {
    if (!entry.retired || entry.refs > 0 || entry.released || entry.state === 'loading') return;
    if (this.active.get(entry.model.name) === entry) return;
    entry.released = true;
    if (this.entries.get(entry.key) === entry) this.entries.delete(entry.key);
    if (entry.session) {
      const s = entry.session;
      s.release().then(
        () => this.log({ event: 'model_unloaded', model: entry.model.name, version: entry.model.version }),
        (e: unknown) => this.log({ event: 'model_unload_failed', model: entry.model.name, version: entry.model.version, message: String((e as Error)?.message ?? e) }),
      );
    }
  }
}
