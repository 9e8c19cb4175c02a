/** A local http server serving model artifacts with misbehaviours, and model variants, for the deploy tests. */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Manifest } from '../../deploy/manifest.js';
import { FMNIST } from '../helpers/fixtures.js';

/**
 * The fixture model with a doc_string field appended (ModelProto field 6; the last occurrence
 * wins), so each tag gives a different but equally valid model.
 */
export function modelVariant(tag: string): Buffer {
  const base = readFileSync(FMNIST.model);
  const text = Buffer.from(`edgeq deploy test ${tag}`, 'utf8');
  if (text.length > 127) throw new Error('tag too long');
  return Buffer.concat([base, Buffer.from([0x32, text.length]), text]);
}

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/**
 * How a route answers: 'ok' honours Range; 'truncate' sends the headers of the whole file, then
 * `cut` bytes and drops the connection; 'ignore-range' always sends the whole file with 200;
 * 'no-range' sends 416 to a Range request; 'stall' sends `cut` bytes and then nothing, keeping the connection open.
 */
export type Mode = 'ok' | 'truncate' | 'ignore-range' | 'no-range' | 'stall';

export interface Route {
  body: Buffer;
  /** Modes for successive requests; the last repeats. */
  modes: Mode[];
  /** Bytes sent before a 'truncate' cuts off (default half). */
  cut?: number;
  /** Content-Length to claim instead of the body's (a lying server). */
  claimLength?: number;
}

export interface TestServer {
  url(path: string): string;
  route(path: string, r: Route): void;
  /** Requests seen per path, with their Range headers. */
  requests: Array<{ path: string; range: string | undefined }>;
}

/** A local artifact server: http, or https with `tls` (PEM certificate and key). */
export async function startServer(t: ExecutionContext, tls?: { cert: string; key: string }): Promise<TestServer> {
  const routes = new Map<string, Route & { n: number }>();
  const requests: TestServer['requests'] = [];
  const handler: http.RequestListener = (req, res) => {
    const path = req.url ?? '/';
    const range = req.headers.range;
    requests.push({ path, range });
    const r = routes.get(path);
    if (!r) {
      res.statusCode = 404;
      res.end('not found');
      return;
    }
    const mode = r.modes[Math.min(r.n, r.modes.length - 1)];
    r.n++;
    const m = range ? /^bytes=(\d+)-$/.exec(range) : null;
    if (mode === 'no-range' && m) {
      res.writeHead(416, { 'content-range': `bytes */${r.body.length}` });
      res.end();
      return;
    }
    if (m && (mode === 'ok' || mode === 'no-range')) {
      const start = Number(m[1]);
      const part = r.body.subarray(start);
      res.writeHead(206, { 'content-length': part.length, 'content-range': `bytes ${start}-${r.body.length - 1}/${r.body.length}` });
      res.end(part);
      return;
    }
    res.writeHead(200, { 'content-length': r.claimLength ?? r.body.length, 'accept-ranges': mode === 'ok' ? 'bytes' : 'none' });
    if (mode === 'stall') {
      res.write(r.body.subarray(0, r.cut ?? Math.floor(r.body.length / 2)));
      return;
    }
    if (mode === 'truncate') {
      res.write(r.body.subarray(0, r.cut ?? Math.floor(r.body.length / 2)), () => {
        setTimeout(() => res.socket?.destroy(), 20);
      });
      return;
    }
    // In chunks, so a client sees the body arrive in several pieces.
    let off = 0;
    const step = () => {
      if (off >= r.body.length) return void res.end();
      const chunk = r.body.subarray(off, off + 64 * 1024);
      off += chunk.length;
      if (res.write(chunk)) setImmediate(step);
      else res.once('drain', step);
    };
    step();
  };
  const server = tls ? https.createServer({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }, handler) : http.createServer(handler);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: (path) => `${tls ? 'https' : 'http'}://127.0.0.1:${port}${path}`,
    route: (path, r) => void routes.set(path, { ...r, n: 0 }),
    requests,
  };
}

/** A manifest for `body` served at `url`. */
export function manifestFor(name: string, version: string, url: string, body: Buffer): Manifest {
  return { name, version, url, sha256: sha256(body), size: body.length };
}

/** Names in the models directory that are not complete artifacts (.part, .lock, .tmp). */
export function strayFiles(modelsDir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(modelsDir);
  } catch {
    return [];
  }
  return names.filter((n) => !/^[0-9a-f]{64}\.onnx$/.test(n));
}

export function onnxFiles(modelsDir: string): string[] {
  try {
    return readdirSync(modelsDir).filter((n) => n.endsWith('.onnx')).sort();
  } catch {
    return [];
  }
}

export const fileOf = (modelsDir: string, sha: string): string => join(modelsDir, `${sha}.onnx`);
