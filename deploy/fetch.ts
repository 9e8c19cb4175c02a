/**
 * Fetching an artifact into the content-addressed directory, verifying it while it streams.
 *
 * http(s): the body streams into `<sha256>.part`, hashed as it goes. An interrupted transfer
 * (connection closed early, idle timeout) keeps the .part; the next fetch hashes what it has and
 * asks for the rest with `Range: bytes=N-`. A 206 appends; a 200 (the server ignores Range)
 * starts again from byte 0. The size is capped (maxBytes) against the manifest, the
 * Content-Length and the bytes as they arrive. A wrong size or sha256 deletes the .part.
 * A local file (only under an allowed directory) is copied the same way, without resuming.
 * On success the .part is fsynced and renamed to `<sha256>.onnx`, then the directory fsynced.
 */
import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, fsyncSync, openSync, realpathSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { resolve, sep } from 'node:path';
import { EdgeqError, fsError } from '../quant/errors.js';
import { artifactPath, fsyncDir, partPath } from './files.js';
import type { ArtifactSource } from './manifest.js';
import { pauseAt } from './pause.js';

export const DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024;
export const DEFAULT_TIMEOUT_MS = 30_000;
const MAX_REDIRECTS = 5;

export interface FetchOptions {
  /** Directory of the content-addressed files. */
  dir: string;
  sha256: string;
  size: number;
  /** Largest artifact accepted (default 2 GiB). */
  maxBytes?: number;
  /** Socket idle timeout, ms (default 30 s). */
  timeoutMs?: number;
  /** Directories local files may be read from (symbolic links and ".." resolved first). */
  allow?: readonly string[];
  /** Progress: bytes present of `size`. */
  onProgress?: (bytes: number, size: number) => void;
}

export interface FetchResult {
  path: string;
  /** The file was already in the directory with the right sha256: nothing fetched. */
  cached: boolean;
  /** Bytes of an earlier .part that were kept (the transfer resumed after them). */
  resumedFrom: number;
  /** Bytes transferred by this fetch. */
  transferred: number;
  /** The server answered a Range request with the whole file. */
  rangeIgnored: boolean;
}

async function hashFile(path: string, h: Hash = createHash('sha256')): Promise<Hash> {
  try {
    for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  } catch (e) {
    throw fsError(e, path);
  }
  return h;
}

function unlinkQuiet(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // not there
  }
}

function realOrResolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
}

/** The real path of `path` if it lies under one of `allow`; E_SOURCE_NOT_ALLOWED otherwise. */
export function checkLocalSource(path: string, allow: readonly string[]): string {
  const real = realOrResolved(path);
  for (const a of allow) {
    const root = realOrResolved(a);
    if (real === root || real.startsWith(root.endsWith(sep) ? root : root + sep)) return real;
  }
  throw new EdgeqError(
    'E_SOURCE_NOT_ALLOWED',
    allow.length === 0
      ? `deploying from the local file ${path} refused: the config allows no local directories (deploy.allow is empty)`
      : `deploying from the local file ${path} refused: it is not under any of the config's deploy.allow directories (${allow.join(', ')})`,
  );
}

/** An open .part file being appended to, hashing what it holds. */
class Part {
  readonly path: string;
  private fd: number;
  bytes: number;
  hash: Hash;

  constructor(path: string, fd: number, bytes: number, hash: Hash) {
    this.path = path;
    this.fd = fd;
    this.bytes = bytes;
    this.hash = hash;
  }

  static async open(path: string, keep: boolean): Promise<Part> {
    let bytes = 0;
    let hash = createHash('sha256');
    if (keep && existsSync(path)) {
      bytes = statSync(path).size;
      hash = await hashFile(path);
    }
    let fd: number;
    try {
      fd = openSync(path, bytes > 0 ? 'a' : 'w', 0o600);
    } catch (e) {
      throw fsError(e, path, true);
    }
    return new Part(path, fd, bytes, hash);
  }

  write(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length) off += writeSync(this.fd, chunk, off, chunk.length - off);
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }

  /** Truncates to nothing (the server sent the whole file after all). */
  restart(): void {
    closeSync(this.fd);
    this.fd = openSync(this.path, 'w', 0o600);
    this.bytes = 0;
    this.hash = createHash('sha256');
  }

  sync(): void {
    fsyncSync(this.fd);
  }

  /** fsync and close; keeps the file. */
  close(): void {
    if (this.fd < 0) return;
    try {
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
      this.fd = -1;
    }
  }

  discard(): void {
    if (this.fd >= 0) {
      closeSync(this.fd);
      this.fd = -1;
    }
    unlinkQuiet(this.path);
  }
}

function request(url: URL, headers: Record<string, string>, timeoutMs: number): Promise<{ res: http.IncomingMessage; req: http.ClientRequest }> {
  return new Promise((resolveP, reject) => {
    const mod = url.protocol === 'https:' ? https : http;
    const req = mod.get(url, { headers: { 'user-agent': 'edgeq-deploy', ...headers } }, (res) => resolveP({ res, req }));
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no data for ${timeoutMs} ms (deploy.timeoutMs)`)));
    req.on('error', reject);
  });
}

function downloadError(url: URL, why: string, cause?: unknown): EdgeqError {
  return new EdgeqError('E_DOWNLOAD', `cannot download ${url.href}: ${why}`, cause === undefined ? undefined : { cause });
}

/** Fetches the artifact of `source` into opts.dir (see the module comment). */
export async function fetchArtifact(source: ArtifactSource, opts: FetchOptions): Promise<FetchResult> {
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  const final = artifactPath(opts.dir, opts.sha256);
  const partFile = partPath(opts.dir, opts.sha256);
  const tooLarge = (n: number, what: string) => new EdgeqError('E_ARTIFACT_TOO_LARGE', `${what} is ${n} bytes, more than this device accepts (deploy.maxBytes = ${maxBytes})`);
  if (opts.size > maxBytes) throw tooLarge(opts.size, 'the artifact (manifest size)');

  if (existsSync(final)) {
    const have = (await hashFile(final)).digest('hex');
    if (have === opts.sha256 && statSync(final).size === opts.size) return { path: final, cached: true, resumedFrom: 0, transferred: 0, rangeIgnored: false };
    // A damaged file under a final name: fetch again, the rename replaces it.
  }

  const part = await Part.open(partFile, source.kind === 'http');
  const finish = async (): Promise<void> => {
    if (part.bytes !== opts.size) {
      part.discard();
      throw new EdgeqError('E_SIZE_MISMATCH', `the artifact has ${part.bytes} bytes, the manifest says ${opts.size}; deleted it`);
    }
    const got = part.hash.digest('hex');
    if (got !== opts.sha256) {
      part.discard();
      throw new EdgeqError('E_CHECKSUM_MISMATCH', `the artifact's sha256 is ${got}, the manifest says ${opts.sha256}; deleted it`);
    }
    part.close();
    await pauseAt('rename');
    try {
      renameSync(partFile, final);
    } catch (e) {
      unlinkQuiet(partFile);
      throw fsError(e, final, true);
    }
    fsyncDir(opts.dir);
    await pauseAt('renamed');
  };

  try {
    if (source.kind === 'file') {
      const real = checkLocalSource(source.path, opts.allow ?? []);
      let st;
      try {
        st = statSync(real);
      } catch (e) {
        throw fsError(e, source.path);
      }
      if (!st.isFile()) throw new EdgeqError('E_FILE_UNREADABLE', `${source.path} is not a regular file`);
      if (st.size > maxBytes) throw tooLarge(st.size, source.path);
      if (st.size !== opts.size) throw new EdgeqError('E_SIZE_MISMATCH', `${source.path} has ${st.size} bytes, the manifest says ${opts.size}`);
      try {
        for await (const chunk of createReadStream(real)) {
          part.write(chunk as Buffer);
          if (part.bytes > opts.size) break;
        }
      } catch (e) {
        throw fsError(e, source.path);
      }
      await finish();
      return { path: final, cached: false, resumedFrom: 0, transferred: opts.size, rangeIgnored: false };
    }

    // A .part longer than the artifact, or complete but wrong, is of no use.
    if (part.bytes > opts.size) part.restart();
    if (part.bytes === opts.size) {
      if (part.hash.copy().digest('hex') === opts.sha256) {
        await finish();
        return { path: final, cached: false, resumedFrom: opts.size, transferred: 0, rangeIgnored: false };
      }
      part.restart();
    }
    const resumedFrom = part.bytes;
    let transferred = 0;
    let rangeIgnored = false;
    let url = source.url;
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    for (let redirects = 0; ; redirects++) {
      const headers: Record<string, string> = part.bytes > 0 ? { range: `bytes=${part.bytes}-` } : {};
      let got: { res: http.IncomingMessage; req: http.ClientRequest };
      try {
        got = await request(url, headers, timeoutMs);
      } catch (e) {
        throw downloadError(url, (e as Error).message, e);
      }
      const { res, req } = got;
      const status = res.statusCode ?? 0;
      if ([301, 302, 303, 307, 308].includes(status) && res.headers.location) {
        res.resume();
        if (redirects >= MAX_REDIRECTS) throw downloadError(url, `more than ${MAX_REDIRECTS} redirects`);
        url = new URL(res.headers.location, url);
        if (url.protocol !== 'http:' && url.protocol !== 'https:') throw downloadError(url, 'redirected to a non-http(s) URL');
        continue;
      }
      if (status === 416 && part.bytes > 0) {
        // The server does not like our range: start over without one.
        res.resume();
        part.restart();
        rangeIgnored = true;
        continue;
      }
      let expectTotal: number;
      if (status === 206 && part.bytes > 0) {
        const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== part.bytes) {
          // A range we did not ask for: start over.
          res.resume();
          part.restart();
          rangeIgnored = true;
          continue;
        }
        if (m[3] !== '*' && Number(m[3]) !== opts.size) {
          res.resume();
          part.discard();
          throw new EdgeqError('E_SIZE_MISMATCH', `${url.href} is ${m[3]} bytes long, the manifest says ${opts.size}`);
        }
        expectTotal = part.bytes + (res.headers['content-length'] !== undefined ? Number(res.headers['content-length']) : opts.size - part.bytes);
      } else if (status === 200) {
        if (part.bytes > 0) {
          rangeIgnored = true;
          part.restart();
        }
        expectTotal = res.headers['content-length'] !== undefined ? Number(res.headers['content-length']) : opts.size;
      } else {
        res.resume();
        throw downloadError(url, `HTTP ${status} ${res.statusMessage ?? ''}`.trim());
      }
      if (expectTotal > maxBytes) {
        req.destroy();
        throw tooLarge(expectTotal, `${url.href} (Content-Length)`);
      }
      if (expectTotal !== opts.size) {
        req.destroy();
        part.discard();
        throw new EdgeqError('E_SIZE_MISMATCH', `${url.href} sends ${expectTotal} bytes, the manifest says ${opts.size}`);
      }
      let paused = false;
      try {
        for await (const chunk of res) {
          part.write(chunk as Buffer);
          transferred += (chunk as Buffer).length;
          if (part.bytes > opts.size) {
            req.destroy();
            break;
          }
          opts.onProgress?.(part.bytes, opts.size);
          if (!paused && part.bytes < opts.size && process.env.EDGEQ_TEST_PAUSE_AT) {
            paused = true;
            part.sync();
            await pauseAt('download');
          }
        }
      } catch (e) {
        // Truncated: keep what arrived for the next attempt.
        part.close();
        throw downloadError(url, `the transfer broke off after ${part.bytes} of ${opts.size} bytes (${(e as Error).message}); deploy again to resume`, e);
      }
      if (part.bytes < opts.size) {
        part.close();
        throw downloadError(url, `the transfer ended after ${part.bytes} of ${opts.size} bytes; deploy again to resume`);
      }
      await finish();
      return { path: final, cached: false, resumedFrom, transferred, rangeIgnored };
    }
  } catch (e) {
    // Anything but a broken transfer leaves no .part behind for a local copy; an http .part stays for resuming.
    if (source.kind === 'file' || part.bytes === 0) part.discard();
    else part.close();
    throw e;
  }
}
