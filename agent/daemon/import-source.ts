/**
 * Where the fleet's `import` command may read samples from: a file under one of the config's
 * `import.allow` directories, or a URL under one of its http(s) prefixes — nothing else, so a
 * command cannot make the device read its own secrets or fetch from anywhere on its network.
 */
import { createWriteStream, realpathSync, statSync } from 'node:fs';
import { isAbsolute, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { EdgeqError } from '../../quant/errors.js';

export type Source = { kind: 'file'; path: string } | { kind: 'url'; url: URL };

function notAllowed(source: string, allow: readonly string[]): EdgeqError {
  return new EdgeqError(
    'E_IMPORT_NOT_ALLOWED',
    allow.length === 0
      ? `import from ${JSON.stringify(source)} refused: this device allows no import sources (config import.allow is empty)`
      : `import from ${JSON.stringify(source)} refused: it is not under any of the config's import.allow entries (${allow.join(', ')})`,
  );
}

function realOrResolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}

/** The source if the config allows it; E_IMPORT_NOT_ALLOWED otherwise. Symbolic links and ".." are resolved before the check. */
export function checkSource(source: string, allow: readonly string[]): Source {
  if (/^https?:\/\//i.test(source)) {
    let url: URL;
    try {
      url = new URL(source);
    } catch {
      throw new EdgeqError('E_ARGUMENT', `${JSON.stringify(source)} is not a valid URL`);
    }
    if (url.username || url.password) throw notAllowed(source, allow);
    for (const a of allow) {
      if (!/^https?:\/\//i.test(a)) continue;
      const p = new URL(a);
      // Same scheme, host and port; the path under the prefix's path (a prefix "https://h/data"
      // allows /data and /data/…, not /database).
      if (p.origin !== url.origin) continue;
      const base = p.pathname.endsWith('/') ? p.pathname : `${p.pathname}/`;
      if (url.pathname === p.pathname || url.pathname.startsWith(base)) return { kind: 'url', url };
    }
    throw notAllowed(source, allow);
  }
  if (!isAbsolute(source)) throw new EdgeqError('E_ARGUMENT', `import source ${JSON.stringify(source)} must be an absolute path or an http(s) URL`);
  const real = realOrResolved(source);
  for (const a of allow) {
    if (!a.startsWith('/')) continue;
    const root = realOrResolved(a);
    if (real === root || real.startsWith(root.endsWith(sep) ? root : root + sep)) return { kind: 'file', path: real };
  }
  throw notAllowed(source, allow);
}

/** Checks a local file's size against the cap. */
export function checkFileSize(path: string, maxBytes: number): void {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new EdgeqError('E_FILE_NOT_FOUND', `file not found: ${path}`);
  }
  if (size > maxBytes) throw new EdgeqError('E_BODY_TOO_LARGE', `${path} is ${size} bytes; imports are limited to ${maxBytes} (config import.maxBytes)`);
}

/** Downloads `url` to `dest`, refusing more than `maxBytes`; redirects must stay allowed. */
export async function download(url: URL, dest: string, maxBytes: number, allow: readonly string[], signal?: AbortSignal, redirects = 0): Promise<number> {
  const timeout = AbortSignal.timeout(10 * 60_000);
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'manual', signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
  } catch (e) {
    throw new EdgeqError('E_DOWNLOAD', `cannot download ${url.href}: ${(e as Error).message}`, { cause: e });
  }
  if (res.status >= 300 && res.status < 400 && res.headers.get('location')) {
    if (redirects >= 5) throw new EdgeqError('E_DOWNLOAD', `cannot download ${url.href}: more than 5 redirects`);
    const next = new URL(res.headers.get('location')!, url);
    const checked = checkSource(next.href, allow);
    if (checked.kind !== 'url') throw notAllowed(next.href, allow);
    return download(checked.url, dest, maxBytes, allow, signal, redirects + 1);
  }
  if (!res.ok || !res.body) throw new EdgeqError('E_DOWNLOAD', `cannot download ${url.href}: HTTP ${res.status} ${res.statusText}`);
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > maxBytes) {
    await res.body.cancel();
    throw new EdgeqError('E_BODY_TOO_LARGE', `${url.href} is ${declared} bytes; imports are limited to ${maxBytes} (config import.maxBytes)`);
  }
  let bytes = 0;
  const body = Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
  body.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    if (bytes > maxBytes) body.destroy(new EdgeqError('E_BODY_TOO_LARGE', `${url.href} is more than ${maxBytes} bytes; imports are limited to that (config import.maxBytes)`));
  });
  try {
    await pipeline(body, createWriteStream(dest, { mode: 0o600 }));
  } catch (e) {
    if (e instanceof EdgeqError) throw e;
    throw new EdgeqError('E_DOWNLOAD', `cannot download ${url.href}: ${(e as Error).message}`, { cause: e });
  }
  return bytes;
}
