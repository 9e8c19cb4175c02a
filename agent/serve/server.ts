/**
 * The local inference endpoint: node:http on a Unix socket (mode 0660) and/or a loopback TCP
 * port. `POST /v1/models/<name>/infer` runs the model's active version on a JSON or .npy body;
 * `GET /v1/health`, `GET /v1/models` and `GET /metrics` (Prometheus text) describe the server.
 *
 * Every request is validated before ONNX Runtime sees it; a bad one gets a 4xx with
 * `{"error": {"code", "message"}}`, and nothing a client sends can crash the server.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, STATUS_CODES } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { connect, isIP } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { dirname } from 'node:path';
import { EdgeqError, isEdgeqError } from '../../quant/errors.js';
import type { ErrorCode } from '../../quant/errors.js';
import { encodeNpy } from '../../quant/npy.js';
import type { NpyArray } from '../../quant/npy.js';
import { ort } from '../../quant/runtime.js';
import { Metrics } from './metrics.js';
import { isModelName } from './names.js';
import { SessionPool } from './sessions.js';
import type { Lease } from './sessions.js';
import { decodeJsonBody, decodeNpyBody, DEFAULT_MAX_ELEMENTS, inputSpecs, outputToJson, toSample } from './tensors.js';
import type { DecodedInput } from './tensors.js';
import type { CaptureSink, ModelSource } from './types.js';

export const DEFAULT_MAX_BODY_BYTES = 16 * 2 ** 20;
/** After the body passes the cap, this much more is read and dropped so the client can read the 413; beyond it the connection is cut. */
const DRAIN_BYTES = 2 ** 20;
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 60_000;
const CLOSE_GRACE_MS = 10_000;
/** Longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

export interface ServerOptions {
  /** Unix socket path (by default the caller's `<state dir>/edgeq.sock`). */
  socket?: string;
  /** TCP port on `host`; 0 picks a free one. */
  port?: number;
  /** TCP host, default 127.0.0.1; anything but loopback needs allowNonLoopback. */
  host?: string;
  allowNonLoopback?: boolean;
  /** Request body cap, default 16 MiB. */
  maxBodyBytes?: number;
  /** Largest input tensor, in elements (default DEFAULT_MAX_ELEMENTS). */
  maxElements?: number;
  /** ONNX Runtime intra-op threads per session (default: ORT's choice). */
  threads?: number;
  models: ModelSource;
  capture?: CaptureSink;
  /**
   * Told after each inference whether the model ran (ok) or failed in ONNX Runtime or at load;
   * requests refused for their input are not counted. Must not throw or block.
   */
  onServed?: (model: string, version: number, ok: boolean, error?: string) => void;
  /** Structured events, one object each (listening, request, model_loaded, …). */
  log?: (event: Record<string, unknown>) => void;
}

export interface RunningServer {
  socket?: string;
  port?: number;
  /** Stops accepting, lets in-flight requests finish, releases sessions, removes the socket. */
  close(): Promise<void>;
  /** The /metrics text. */
  metrics(): string;
}

const STATUS: Partial<Record<ErrorCode, number>> = {
  E_MODEL_NAME: 400,
  E_BAD_JSON: 400,
  E_BAD_REQUEST: 400,
  E_INPUT_MISSING: 400,
  E_INPUT_UNKNOWN: 400,
  E_INPUT_INVALID: 400,
  E_SHAPE_MISMATCH: 400,
  E_DTYPE_MISMATCH: 400,
  E_NPY_INVALID: 400,
  E_MODEL_UNKNOWN: 404,
  E_NOT_FOUND: 404,
  E_METHOD_NOT_ALLOWED: 405,
  E_TIMEOUT: 408,
  E_BODY_TOO_LARGE: 413,
  E_TENSOR_TOO_LARGE: 413,
  E_MODEL_UNSUPPORTED: 501,
  E_UNAVAILABLE: 503,
};

/** HTTP status of an error reply with this code; unlisted codes are server faults (500). */
export function httpStatus(code: ErrorCode): number {
  return STATUS[code] ?? 500;
}

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const v = isIP(host);
  if (v === 4) return host.startsWith('127.');
  if (v === 6) {
    const h = host.toLowerCase();
    return h === '::1' || h === '0:0:0:0:0:0:0:1' || /^::ffff:127\.\d+\.\d+\.\d+$/.test(h);
  }
  return false;
}

/** The client went away before its request was read; there is no one to answer. */
class ClientGone extends Error {}

class BodyTooLarge extends EdgeqError {
  constructor(max: number, got: string, readonly cut: boolean) {
    super('E_BODY_TOO_LARGE', `the request body is ${got}, over the limit of ${max} bytes`);
  }
}

function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) return Promise.reject(new BodyTooLarge(max, `${declared} bytes`, true));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    let dropped = 0;
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
    };
    const onData = (c: Buffer) => {
      if (over) {
        dropped += c.length;
        if (dropped > DRAIN_BYTES) {
          cleanup();
          req.pause();
          reject(new BodyTooLarge(max, `more than ${size + dropped} bytes`, true));
        }
        return;
      }
      size += c.length;
      if (size > max) {
        over = true;
        chunks.length = 0;
        return;
      }
      chunks.push(c);
    };
    const onEnd = () => {
      cleanup();
      if (over) reject(new BodyTooLarge(max, `${size + dropped} bytes`, false));
      else resolve(Buffer.concat(chunks, size));
    };
    const onClose = () => {
      cleanup();
      reject(new ClientGone('the client closed the connection before sending the whole body'));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
  });
}

function send(res: ServerResponse, status: number, body: string | Uint8Array, type: string, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.writableEnded || res.destroyed) return;
  res.writeHead(status, {
    'Content-Type': type,
    'Content-Length': String(typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    ...headers,
  });
  res.end(body);
}

function sendJson(res: ServerResponse, status: number, value: unknown, headers?: Record<string, string>): void {
  send(res, status, JSON.stringify(value), 'application/json; charset=utf-8', headers);
}

function mediaTypes(header: string | undefined): string[] {
  return (header ?? '').split(',').map((s) => s.split(';')[0].trim().toLowerCase()).filter((s) => s !== '');
}

function isNpyBody(req: IncomingMessage, body: Buffer): boolean {
  const [type] = mediaTypes(req.headers['content-type']);
  if (type === 'application/x-npy' || type === 'application/octet-stream') return true;
  return body.length >= 6 && body[0] === 0x93 && body.toString('latin1', 1, 6) === 'NUMPY';
}

const NPY_TYPES = new Set(['float32', 'float64', 'uint8', 'int8', 'int32', 'int64']);

async function prepareSocketPath(path: string): Promise<void> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) throw new EdgeqError('E_CONFIG_INVALID', `socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes, the limit for a Unix socket; choose a shorter one`);
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new EdgeqError('E_CONFIG_INVALID', `cannot use socket path ${path}: ${(e as Error).message}`, { cause: e });
    try {
      mkdirSync(dirname(path), { recursive: true, mode: 0o750 });
    } catch (e2) {
      throw new EdgeqError('E_CONFIG_INVALID', `cannot create the directory of socket ${path}: ${(e2 as Error).message}`, { cause: e2 });
    }
    return;
  }
  if (!st.isSocket()) throw new EdgeqError('E_CONFIG_INVALID', `${path} exists and is not a socket; not removing it (choose another socket path or move the file)`);
  const live = await new Promise<boolean>((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new EdgeqError('E_ADDRESS_IN_USE', `another server is listening on ${path}`);
  try {
    unlinkSync(path);
  } catch (e) {
    throw new EdgeqError('E_CONFIG_INVALID', `cannot remove the stale socket ${path}: ${(e as Error).message}`, { cause: e });
  }
}

function listen(server: Server, target: { path: string } | { port: number; host: string }): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      const where = 'path' in target ? target.path : `${target.host}:${target.port}`;
      if (e.code === 'EADDRINUSE') reject(new EdgeqError('E_ADDRESS_IN_USE', `cannot listen on ${where}: address in use`, { cause: e }));
      else reject(new EdgeqError('E_CONFIG_INVALID', `cannot listen on ${where}: ${e.message}`, { cause: e }));
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(target);
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
    server.closeIdleConnections();
  });
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const log = (event: Record<string, unknown>) => {
    try {
      opts.log?.({ time: new Date().toISOString(), ...event });
    } catch {
      // a broken logger must not break serving
    }
  };
  if (opts.socket === undefined && opts.port === undefined) throw new EdgeqError('E_CONFIG_INVALID', 'the server needs a Unix socket path, a TCP port, or both');
  if (opts.port !== undefined && (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535)) throw new EdgeqError('E_CONFIG_INVALID', `port must be a whole number from 0 to 65535, got ${opts.port}`);
  const host = opts.host ?? '127.0.0.1';
  if (opts.port !== undefined && !isLoopbackHost(host) && !opts.allowNonLoopback) {
    throw new EdgeqError('E_CONFIG_INVALID', `refusing to listen on ${host}: the endpoint listens on loopback only (127.0.0.1, ::1) unless the configuration explicitly allows another address`);
  }
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  if (!Number.isSafeInteger(maxBody) || maxBody <= 0) throw new EdgeqError('E_CONFIG_INVALID', `maxBodyBytes must be a positive whole number, got ${maxBody}`);
  const maxElements = opts.maxElements ?? DEFAULT_MAX_ELEMENTS;
  if (!Number.isSafeInteger(maxElements) || maxElements <= 0) throw new EdgeqError('E_CONFIG_INVALID', `maxElements must be a positive whole number, got ${maxElements}`);
  if (opts.threads !== undefined && (!Number.isInteger(opts.threads) || opts.threads < 1)) throw new EdgeqError('E_CONFIG_INVALID', `threads must be a positive whole number, got ${opts.threads}`);

  const models = opts.models;
  const capture = opts.capture;
  const onServed = (model: string, version: number, ok: boolean, error?: string): void => {
    try {
      opts.onServed?.(model, version, ok, error);
    } catch (e) {
      log({ event: 'on_served_failed', model, version, message: String((e as Error)?.message ?? e) });
    }
  };
  const pool = new SessionPool(opts.threads, log);
  const metrics = new Metrics();
  const started = performance.now();
  let closing = false;

  const captureStats = (): Record<string, { samples: number; bytes: number }> | undefined => {
    try {
      return capture?.stats?.();
    } catch (e) {
      log({ event: 'capture_stats_failed', message: String((e as Error)?.message ?? e) });
      return undefined;
    }
  };

  const allowOnly = (req: IncomingMessage, methods: string[]) => {
    if (!methods.includes(req.method ?? '')) {
      throw Object.assign(new EdgeqError('E_METHOD_NOT_ALLOWED', `${req.method} is not allowed here; use ${methods.join(' or ')}`), { allow: methods.join(', ') });
    }
  };

  interface Ctx {
    model?: string;
    version?: number;
    code?: ErrorCode;
  }

  const sendError = (req: IncomingMessage, res: ServerResponse, e: unknown, ctx: Ctx) => {
    if (e instanceof ClientGone) {
      ctx.code = 'E_BAD_REQUEST';
      log({ event: 'client_gone', path: (req.url ?? '').slice(0, 200), message: e.message });
      return;
    }
    let err: EdgeqError;
    if (isEdgeqError(e)) err = e;
    else {
      log({ event: 'internal_error', message: String((e as Error)?.message ?? e), stack: (e as Error)?.stack });
      err = new EdgeqError('E_INTERNAL', `internal error: ${String((e as Error)?.message ?? e)}`);
    }
    ctx.code = err.code;
    metrics.error(err.code);
    if (httpStatus(err.code) >= 500) log({ event: 'request_failed', path: (req.url ?? '').slice(0, 200), code: err.code, message: err.message });
    const headers: Record<string, string> = {};
    const allow = (e as { allow?: string }).allow;
    if (allow) headers.Allow = allow;
    // Unread body left on the connection: close it rather than read the rest.
    if (!req.complete || closing) headers.Connection = 'close';
    sendJson(res, httpStatus(err.code), { error: { code: err.code, message: err.message } }, headers);
    if (e instanceof BodyTooLarge && e.cut) res.once('finish', () => req.socket.destroySoon());
  };

  const infer = async (req: IncomingMessage, res: ServerResponse, rawName: string, ctx: Ctx) => {
    allowOnly(req, ['POST']);
    let name: string;
    try {
      name = decodeURIComponent(rawName);
    } catch {
      throw new EdgeqError('E_MODEL_NAME', `the model name in the path is not valid percent-encoding`);
    }
    if (!isModelName(name)) {
      const shown = JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}…` : name);
      throw new EdgeqError('E_MODEL_NAME', `model name ${shown} is not allowed: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    }
    const served = models.resolve(name);
    if (!served) {
      pool.forget(name);
      throw new EdgeqError('E_MODEL_UNKNOWN', `there is no model ${name} (GET /v1/models lists them)`);
    }
    ctx.model = name;
    ctx.version = served.version;
    const body = await readBody(req, maxBody);
    let lease: Lease | undefined;
    try {
      lease = await pool.acquire(served);
    } catch (e) {
      // The version could not be loaded (bad or missing file): a failure of that version.
      if (isEdgeqError(e) && e.code !== 'E_UNAVAILABLE') onServed(served.name, served.version, false, e.message);
      throw e;
    }
    let inputs: DecodedInput[];
    let reply: { status: number; body: string | Uint8Array; type: string; headers: Record<string, string> };
    try {
      const m = lease.model;
      ctx.version = m.version;
      const specs = inputSpecs(lease.session);
      inputs = isNpyBody(req, body) ? decodeNpyBody(body, specs, maxElements) : decodeJsonBody(body, specs, maxElements);
      const feeds: Record<string, ort.Tensor> = {};
      for (const d of inputs) feeds[d.name] = new ort.Tensor(d.dtype as 'float32', d.data as Float32Array, d.shape);
      const t0 = performance.now();
      let out: ort.InferenceSession.OnnxValueMapType;
      try {
        // ORT's own log line for a failed run would go to stderr; the error reply and our log carry it.
        out = await lease.session.run(feeds, { logSeverityLevel: 4 });
      } catch (e) {
        const err = new EdgeqError('E_RUNTIME', `ONNX Runtime failed on model ${m.name} version ${m.version}: ${String((e as Error)?.message ?? e).split('\n')[0]}`, { cause: e });
        onServed(m.name, m.version, false, err.message);
        throw err;
      }
      onServed(m.name, m.version, true);
      const seconds = (performance.now() - t0) / 1000;
      lease.release();
      lease = undefined;
      const latencyMs = Math.round(seconds * 1e6) / 1e3;
      try {
        const names = Object.keys(out);
        for (const n of names) {
          if (!(out[n] instanceof ort.Tensor)) throw new EdgeqError('E_MODEL_UNSUPPORTED', `output ${n} is not a tensor; the endpoint serves tensor outputs only`);
        }
        const tensors = out as Record<string, ort.Tensor>;
        const headers = { 'X-Edgeq-Model': m.name, 'X-Edgeq-Model-Version': String(m.version), 'X-Edgeq-Model-Kind': m.kind, 'X-Edgeq-Latency-Ms': String(latencyMs) };
        const first = tensors[names[0]];
        if (mediaTypes(req.headers.accept).includes('application/x-npy') && first && NPY_TYPES.has(first.type)) {
          reply = { status: 200, body: encodeNpy(first.data as NpyArray, first.dims), type: 'application/x-npy', headers: { ...headers, 'X-Edgeq-Output': names[0] } };
        } else {
          const outputs = Object.fromEntries(names.map((n) => [n, outputToJson(tensors[n])]));
          reply = { status: 200, body: JSON.stringify({ model: m.name, version: m.version, kind: m.kind, latencyMs, outputs }), type: 'application/json; charset=utf-8', headers };
        }
      } finally {
        for (const t of Object.values(out)) (t as ort.Tensor).dispose?.();
      }
      metrics.observe(m.name, m.version, seconds);
    } finally {
      lease?.release();
    }
    const version = ctx.version;
    if (capture) {
      res.once('finish', () => {
        setImmediate(() => {
          try {
            capture.offer(name, version, inputs.map(toSample), 'endpoint');
          } catch (e) {
            log({ event: 'capture_failed', model: name, version, message: String((e as Error)?.message ?? e) });
          }
        });
      });
    }
    send(res, reply.status, reply.body, reply.type, closing ? { ...reply.headers, Connection: 'close' } : reply.headers);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const t0 = performance.now();
    const ctx: Ctx = {};
    req.on('error', () => {});
    res.on('error', () => {});
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q >= 0 ? url.slice(0, q) : url;
    try {
      if (closing) throw new EdgeqError('E_UNAVAILABLE', 'the server is shutting down');
      const prefix = '/v1/models/';
      const suffix = '/infer';
      if (path === '/v1/health') {
        allowOnly(req, ['GET', 'HEAD']);
        sendJson(res, 200, { ok: true, uptimeS: Math.round((performance.now() - started) / 100) / 10, models: models.list().length });
      } else if (path === '/v1/models') {
        allowOnly(req, ['GET', 'HEAD']);
        const loaded = pool.loaded();
        sendJson(res, 200, { models: models.list().map((m) => ({ name: m.name, version: m.version, kind: m.kind, loadedVersion: loaded.get(m.name) ?? null })) });
      } else if (path === '/metrics') {
        allowOnly(req, ['GET', 'HEAD']);
        send(res, 200, metrics.render(captureStats()), 'text/plain; version=0.0.4; charset=utf-8');
      } else if (path.startsWith(prefix) && path.endsWith(suffix) && path.length >= prefix.length + suffix.length) {
        await infer(req, res, path.slice(prefix.length, path.length - suffix.length), ctx);
      } else {
        throw new EdgeqError('E_NOT_FOUND', `no route ${JSON.stringify(path.length > 100 ? `${path.slice(0, 100)}…` : path)} (routes: POST /v1/models/<name>/infer, GET /v1/health, GET /v1/models, GET /metrics)`);
      }
    } catch (e) {
      sendError(req, res, e, ctx);
    } finally {
      const status = res.headersSent ? res.statusCode : 0;
      if (ctx.model !== undefined && ctx.version !== undefined && status) metrics.request(ctx.model, ctx.version, status);
      log({ event: 'request', method: req.method, path: path.slice(0, 200), status, ...(ctx.code ? { code: ctx.code } : {}), ...(ctx.model ? { model: ctx.model, version: ctx.version } : {}), ms: Math.round((performance.now() - t0) * 1000) / 1000 });
    }
  };

  const onClientError = (err: NodeJS.ErrnoException, socket: Socket) => {
    const busy = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent;
    if (err.code === 'ECONNRESET' || !socket.writable || busy) {
      socket.destroy();
      return;
    }
    const [status, code, message]: [number, ErrorCode, string] =
      err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'E_BAD_REQUEST', 'the request headers are too large']
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' || err.code === 'ERR_HTTP_HEADERS_TIMEOUT' ? [408, 'E_TIMEOUT', 'the request took too long to arrive']
          : [400, 'E_BAD_REQUEST', `malformed HTTP request (${err.code ?? 'parse error'})`];
    metrics.error(code);
    log({ event: 'client_error', status, code, reason: err.code });
    const body = JSON.stringify({ error: { code, message } });
    socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
  };

  const makeServer = () => {
    const server = createServer({ requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: HEADERS_TIMEOUT_MS, connectionsCheckingInterval: 2_000 }, (req, res) => void handle(req, res));
    server.on('clientError', onClientError);
    // `Expect: 100-continue` (curl sends it for large bodies): no go-ahead for a body over the cap.
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
      if (!(Number(req.headers['content-length']) > maxBody)) res.writeContinue();
      void handle(req, res);
    });
    return server;
  };

  const servers: Server[] = [];
  const result: RunningServer = { close: async () => {}, metrics: () => metrics.render(captureStats()) };
  try {
    if (opts.socket !== undefined) {
      await prepareSocketPath(opts.socket);
      const s = makeServer();
      servers.push(s);
      await listen(s, { path: opts.socket });
      chmodSync(opts.socket, 0o660);
      result.socket = opts.socket;
      log({ event: 'listening', socket: opts.socket });
    }
    if (opts.port !== undefined) {
      const s = makeServer();
      servers.push(s);
      await listen(s, { port: opts.port, host });
      result.port = (s.address() as AddressInfo).port;
      log({ event: 'listening', host, port: result.port });
    }
  } catch (e) {
    await Promise.all(servers.map(closeServer));
    throw e;
  }
  for (const s of servers) s.on('error', (e) => log({ event: 'server_error', message: e.message }));

  let closed: Promise<void> | undefined;
  result.close = () => {
    closed ??= (async () => {
      closing = true;
      const force = setTimeout(() => servers.forEach((s) => s.closeAllConnections()), CLOSE_GRACE_MS);
      force.unref();
      await Promise.all(servers.map(closeServer));
      clearTimeout(force);
      await pool.close();
      if (result.socket) {
        try {
          if (lstatSync(result.socket).isSocket()) unlinkSync(result.socket);
        } catch {
          // already gone
        }
      }
      log({ event: 'closed' });
    })();
    return closed;
  };
  return result;
}
