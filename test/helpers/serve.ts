/** For tests of the inference endpoint: raw HTTP requests over a socket or port, and a recording capture sink. */
import { request as httpRequest } from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import type { CaptureSink, SampleTensor } from '../../agent/serve/types.js';
import { writeModel } from '../../quant/onnx/model.js';
import { DT } from '../../quant/onnx/tensor.js';
import { buildModel, floatInput, makeNode, makeTensor, randomFloats } from './models.js';

export type Target = { socketPath: string } | { port: number };

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body parsed as JSON (throws if it is not). */
  json(): Record<string, unknown>;
}

export interface RequestOptions {
  method?: string;
  path: string;
  headers?: Record<string, string | number>;
  body?: string | Uint8Array;
  /** Send the body in chunks with Transfer-Encoding: chunked (no Content-Length). */
  chunked?: boolean;
}

/** One HTTP request on its own connection (no keep-alive), resolved with the full reply. */
export function request(target: Target, opts: RequestOptions): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string | number> = { Connection: 'close', ...opts.headers };
    if (opts.body !== undefined && !opts.chunked && headers['Content-Length'] === undefined) headers['Content-Length'] = Buffer.byteLength(opts.body);
    const req = httpRequest({ ...target, host: 'port' in target ? '127.0.0.1' : undefined, method: opts.method ?? 'GET', path: opts.path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body.toString('utf8')) as Record<string, unknown> });
      });
    });
    req.on('error', reject);
    if (opts.body !== undefined) {
      const bytes = typeof opts.body === 'string' ? Buffer.from(opts.body) : Buffer.from(opts.body.buffer, opts.body.byteOffset, opts.body.byteLength);
      if (opts.chunked) {
        for (let off = 0; off < bytes.length; off += 16384) req.write(bytes.subarray(off, off + 16384));
      } else req.write(bytes);
    }
    req.end();
  });
}

/** The error code of a JSON error reply. */
export function errorCode(r: Reply): string | undefined {
  try {
    return (r.json().error as { code?: string } | undefined)?.code;
  } catch {
    return undefined;
  }
}

export interface Offer {
  model: string;
  version: number;
  tensors: SampleTensor[];
  source: string;
}

/** A CaptureSink that remembers every offer. */
export class RecordingSink implements CaptureSink {
  readonly offers: Offer[] = [];

  offer(model: string, version: number, tensors: SampleTensor[], source: string): void {
    this.offers.push({ model, version, tensors, source });
  }

  stats(): Record<string, { samples: number; bytes: number }> {
    const out: Record<string, { samples: number; bytes: number }> = {};
    for (const o of this.offers) {
      const s = (out[o.model] ??= { samples: 0, bytes: 0 });
      s.samples += o.tensors[0]?.shape[0] ?? 1;
      s.bytes += o.tensors.reduce((a, t) => a + t.data.byteLength, 0);
    }
    return out;
  }

  /** Resolves once `n` offers have arrived (offers come just after the reply). */
  async waitFor(n: number): Promise<void> {
    for (let i = 0; i < 200 && this.offers.length < n; i++) await new Promise((r) => setTimeout(r, 10));
  }
}

/** Every line of a Prometheus text exposition (0.0.4) that is not a valid comment or sample. */
export function badExpositionLines(text: string): string[] {
  const name = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  const label = '[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
  const value = '(?:[-+]?(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][-+]?[0-9]+)?|NaN|[-+]Inf)';
  const sample = new RegExp(`^${name}(?:\\{(?:${label}(?:,${label})*,?)?\\})? ${value}(?: -?[0-9]+)?$`);
  const help = new RegExp(`^# HELP ${name} .*$`);
  const type = new RegExp(`^# TYPE ${name} (?:counter|gauge|histogram|summary|untyped)$`);
  const lines = text.endsWith('\n') ? text.slice(0, -1).split('\n') : [...text.split('\n'), '(no final newline)'];
  return lines.filter((l) => !(sample.test(l) || help.test(l) || type.test(l)));
}

/** The value of one sample line (`name{labels}`, labels in the order written), or undefined. */
export function sampleValue(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** A model with the fixture CNN's signature (input [N,1,28,28] → logits [N,10]) but other weights: a new "version". */
export function linearClassifier(path: string, seed: number): void {
  const w = randomFloats(784 * 10, seed, 0.1);
  writeModel(
    buildModel(
      [makeNode('Flatten', ['input'], ['flat'], 'flatten', { axis: 1 }), makeNode('MatMul', ['flat', 'w'], ['logits'], 'matmul')],
      [floatInput('input', ['N', 1, 28, 28])],
      [floatInput('logits', ['N', 10])],
      [makeTensor('w', w, [784, 10])],
    ),
    path,
  );
}

/** Two float inputs a, b [N, 3] → y = a + b. */
export function pairModel(path: string): void {
  writeModel(buildModel([makeNode('Add', ['a', 'b'], ['y'], 'add')], [floatInput('a', ['N', 3]), floatInput('b', ['N', 3])], [floatInput('y', ['N', 3])], []), path);
}

/** One int64 input ids [N] → y = float(ids) * 2, float32. */
export function idsModel(path: string): void {
  writeModel(
    buildModel(
      [makeNode('Cast', ['ids'], ['f'], 'cast', { to: DT.FLOAT }), makeNode('Add', ['f', 'f'], ['y'], 'double')],
      [floatInput('ids', ['N'], DT.INT64)],
      [floatInput('y', ['N'])],
      [],
    ),
    path,
  );
}

/** x [N, 4] → Reshape to a fixed [2, 2]: valid for N = 1, an ONNX Runtime error for any other batch. */
export function fixedReshapeModel(path: string): void {
  writeModel(
    buildModel([makeNode('Reshape', ['x', 'shape'], ['y'], 'reshape')], [floatInput('x', ['N', 4])], [floatInput('y', [2, 2])], [makeTensor('shape', new BigInt64Array([2n, 2n]), [2])]),
    path,
  );
}
