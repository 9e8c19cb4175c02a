/**
 * A deploy manifest: which model file to fetch, what it must hash to, and (optionally) an
 * Ed25519 signature over it.
 *
 *   { "name": "fmnist", "version": "1.4.0", "url": "https://models.example/fmnist-1.4.0.onnx",
 *     "sha256": "<64 hex>", "size": 517256, "signature": "<base64>" }
 *
 * - `name`: the model's name on the device (the store's rule: 1 to 64 letters, digits, '.', '_'
 *   or '-', starting with a letter or digit).
 * - `version`: the release, chosen by whoever publishes the model: a positive whole number or a
 *   semver-like string (1 to 64 of letters, digits, '.', '+', '_', '-', starting with a letter or
 *   digit; e.g. "1.4.0", "2024-05-01", "7"). It is kept as a string (a number 7 becomes "7") and
 *   recorded with the store version it becomes; the store numbers versions itself (1, 2, 3, …
 *   in deploy order), so the release only needs to be unique per model, not ordered.
 * - `url`: http:// or https:// URL, a file:// URL, or a file path (absolute, or relative to the
 *   manifest file's directory). Local files must lie under the config's deploy.allow directories.
 * - `sha256`: 64 hex digits (case-insensitive; kept in lower case). `size`: bytes, positive.
 * - `signature`: base64 Ed25519 signature over canonicalBytes(manifest) (see signature.ts).
 * - `kind`: optional, "fp32" (default) or "int8"; signed when present.
 */
import { isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EdgeqError } from '../quant/errors.js';

export interface Manifest {
  name: string;
  version: string;
  url: string;
  sha256: string;
  size: number;
  signature?: string;
  kind?: 'fp32' | 'int8';
}

/** Where a manifest's artifact comes from. */
export type ArtifactSource = { kind: 'http'; url: URL } | { kind: 'file'; path: string };

export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const RELEASE = /^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/;
const SHA256 = /^[0-9a-fA-F]{64}$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const KEYS = ['name', 'version', 'url', 'sha256', 'size', 'signature', 'kind'];

/** Validates a parsed manifest; `source` names it in errors. */
export function parseManifest(value: unknown, source = 'the manifest'): Manifest {
  const bad = (why: string) => new EdgeqError('E_MANIFEST_INVALID', `${source}: ${why}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('a manifest must be a JSON object {name, version, url, sha256, size, kind?, signature?}');
  const m = value as Record<string, unknown>;
  for (const k of Object.keys(m)) if (!KEYS.includes(k)) throw bad(`unknown key "${k}" (known: ${KEYS.join(', ')})`);
  if (typeof m.name !== 'string' || !MODEL_NAME.test(m.name)) throw bad(`"name" must be 1 to 64 letters, digits, '.', '_' or '-' starting with a letter or digit, got ${JSON.stringify(m.name)}`);
  let version: string;
  if (typeof m.version === 'number') {
    if (!Number.isSafeInteger(m.version) || m.version < 1) throw bad(`"version" must be a positive whole number or a release string like "1.4.0", got ${JSON.stringify(m.version)}`);
    version = String(m.version);
  } else if (typeof m.version === 'string' && RELEASE.test(m.version)) {
    version = m.version;
  } else {
    throw bad(`"version" must be a positive whole number or a release string like "1.4.0" (letters, digits, '.', '+', '_', '-'), got ${JSON.stringify(m.version)}`);
  }
  if (typeof m.url !== 'string' || m.url === '') throw bad('"url" must be an http(s) URL or a file path');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(m.url) && !/^(https?|file):\/\//i.test(m.url)) throw bad(`"url" must be http://, https:// or file://, got ${JSON.stringify(m.url)}`);
  if (/^https?:\/\//i.test(m.url)) {
    let u: URL;
    try {
      u = new URL(m.url);
    } catch {
      throw bad(`"url" ${JSON.stringify(m.url)} is not a valid URL`);
    }
    if (u.username || u.password) throw bad('"url" must not carry a user name or password');
  }
  if (typeof m.sha256 !== 'string' || !SHA256.test(m.sha256)) throw bad(`"sha256" must be 64 hex digits, got ${JSON.stringify(m.sha256)}`);
  if (!Number.isSafeInteger(m.size) || (m.size as number) < 1) throw bad(`"size" must be a positive whole number of bytes, got ${JSON.stringify(m.size)}`);
  const out: Manifest = { name: m.name, version, url: m.url, sha256: m.sha256.toLowerCase(), size: m.size as number };
  if (m.signature !== undefined) {
    if (typeof m.signature !== 'string' || !BASE64.test(m.signature)) throw bad('"signature" must be a base64 string');
    out.signature = m.signature;
  }
  if (m.kind !== undefined) {
    if (m.kind !== 'fp32' && m.kind !== 'int8') throw bad(`"kind" must be "fp32" or "int8", got ${JSON.stringify(m.kind)}`);
    out.kind = m.kind;
  }
  return out;
}

/** Where the artifact comes from; relative paths are taken from `baseDir` (the manifest file's directory). */
export function artifactSource(m: Manifest, baseDir: string = process.cwd()): ArtifactSource {
  if (/^https?:\/\//i.test(m.url)) return { kind: 'http', url: new URL(m.url) };
  if (/^file:\/\//i.test(m.url)) {
    try {
      return { kind: 'file', path: fileURLToPath(m.url) };
    } catch (e) {
      throw new EdgeqError('E_MANIFEST_INVALID', `"url" ${JSON.stringify(m.url)} is not a usable file URL: ${(e as Error).message}`);
    }
  }
  return { kind: 'file', path: isAbsolute(m.url) ? m.url : resolve(baseDir, m.url) };
}
