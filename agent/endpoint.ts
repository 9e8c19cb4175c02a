/**
 * The local inference endpoint wired to the store: it serves each model's active version and
 * captures per the model's policy. `edgeq serve` runs it alone; the daemon runs it beside the
 * fleet link.
 */
import { CaptureWriter } from './capture/index.js';
import type { ServeConfig } from './config.js';
import { startServer, type CaptureSink, type ModelSource, type RunningServer, type ServedModel } from './serve/index.js';
import type { Store } from './store/index.js';
import { DEFAULT_PROBATION, Probation, type ProbationEvent, type ProbationPolicy } from './probation.js';

/** The active version of each model in the store. */
export function storeModels(store: Store): ModelSource {
  const served = (name: string): ServedModel | undefined => {
    const v = store.activeVersion(name);
    return v ? { name, version: v.version, kind: v.kind, path: v.path } : undefined;
  };
  return {
    resolve: (name) => (store.hasModel(name) ? served(name) : undefined),
    list: () => store.listModels().map((m) => served(m.name)).filter((m): m is ServedModel => m !== undefined),
  };
}

export function storeCapture(store: Store, writer: CaptureWriter): CaptureSink {
  return {
    offer: (model, _version, tensors, source) => writer.offer(model, tensors, source),
    stats: () => Object.fromEntries(store.listModels().map((m) => {
      const s = store.captureStats(m.name);
      return [m.name, { samples: s.kept, bytes: s.bytes }];
    })),
  };
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export interface Endpoint {
  server: RunningServer;
  writer?: CaptureWriter;
  probation: Probation;
  close(): Promise<void>;
}

export type Log = (event: Record<string, unknown>) => void;

/** One JSON object per line on stderr: journald and log shippers parse it as is. */
export const jsonLog: Log = (event) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...event }) + '\n');

export interface EndpointOptions extends ServeConfig {
  socket?: string;
  capture?: boolean;
  /** The capture writer's in-memory queue caps (config capture.maxQueue, capture.maxQueueBytes). */
  captureQueue?: { maxQueue?: number; maxQueueBytes?: number };
  threads?: number;
  log?: Log;
  /** Probation of newly activated versions (agent/probation.ts); DEFAULT_PROBATION where unset. */
  probation?: Partial<ProbationPolicy>;
  onProbation?: (e: ProbationEvent) => void;
}

/**
 * Settles pending activations for this start (agent/probation.ts: a start may roll one back),
 * then serves the active versions and counts their inferences toward confirmation.
 */
export async function startEndpoint(store: Store, opts: EndpointOptions): Promise<Endpoint> {
  const log = opts.log ?? jsonLog;
  const probation = new Probation(store, { ...DEFAULT_PROBATION, ...opts.probation }, log, opts.onProbation);
  await probation.onStart();
  const writer = opts.capture === false ? undefined : new CaptureWriter(store, { ...definedOnly(opts.captureQueue ?? {}), onError: (e) => log({ level: 'warn', event: 'capture-refused', message: (e as Error).message }) });
  const server = await startServer({
    socket: opts.socket,
    port: opts.port,
    host: opts.host,
    allowNonLoopback: opts.allowNonLoopback,
    maxBodyBytes: opts.maxBodyBytes,
    maxElements: opts.maxElements,
    threads: opts.threads,
    models: storeModels(store),
    capture: writer ? storeCapture(store, writer) : undefined,
    onServed: (model, version, ok, error) => probation.served(model, version, ok, error),
    log,
  });
  return {
    server,
    writer,
    probation,
    async close() {
      await server.close();
      await probation.settled();
      await writer?.close();
    },
  };
}
