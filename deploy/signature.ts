/**
 * Ed25519 signatures over deploy manifests (node:crypto). The signed bytes are the UTF-8 of
 * JSON.stringify({name, version, url, sha256, size, kind}) with the keys in exactly that order,
 * `version` as a string, `sha256` in lower case and `kind` only when the manifest has one —
 * what parseManifest() produces, so a publisher signs canonicalBytes(parseManifest(m)). Every
 * field that decides what the device does is signed: `kind` decides which version optimize
 * quantizes (the newest fp32 one). A manifest without `kind` has the bytes it had
 * before `kind` was signed.
 */
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { EdgeqError, fsError } from '../quant/errors.js';
import type { Manifest } from './manifest.js';

export function canonicalBytes(m: Manifest): Buffer {
  return Buffer.from(JSON.stringify({ name: m.name, version: m.version, url: m.url, sha256: m.sha256, size: m.size, ...(m.kind !== undefined ? { kind: m.kind } : {}) }), 'utf8');
}

/** Signs a manifest with an Ed25519 private key (publishers and tests); returns base64. */
export function signManifest(m: Manifest, privateKey: KeyObject | string): string {
  return sign(null, canonicalBytes(m), privateKey).toString('base64');
}

/** Ed25519 public keys from PEM files. */
export function loadPublicKeys(paths: readonly string[]): KeyObject[] {
  return paths.map((p) => {
    let pem: string;
    try {
      pem = readFileSync(p, 'utf8');
    } catch (e) {
      throw fsError(e, p);
    }
    return parsePublicKey(pem, p);
  });
}

export function parsePublicKey(pem: string | KeyObject, what = 'a public key'): KeyObject {
  let key: KeyObject;
  try {
    key = typeof pem === 'string' ? createPublicKey(pem) : pem;
  } catch (e) {
    throw new EdgeqError('E_CONFIG_INVALID', `${what} is not a PEM public key: ${(e as Error).message}`, { cause: e });
  }
  if (key.type !== 'public' || key.asymmetricKeyType !== 'ed25519') throw new EdgeqError('E_CONFIG_INVALID', `${what} is not an Ed25519 public key (it is ${String(key.asymmetricKeyType)} ${key.type})`);
  return key;
}

export type SignatureOutcome = 'verified' | 'unsigned' | 'not-checked';

/**
 * Checks `m`'s signature against `keys` (any one may have signed). With keys, a present signature
 * must verify (E_SIGNATURE_INVALID); a missing one is refused when `required`
 * (E_SIGNATURE_REQUIRED). `required` without keys is a config error. Without keys and not
 * required, nothing is checked.
 */
export function checkSignature(m: Manifest, keys: readonly KeyObject[], required: boolean): SignatureOutcome {
  if (required && keys.length === 0) throw new EdgeqError('E_CONFIG_INVALID', 'deploy.requireSignature is on but deploy.publicKeys lists no key to verify with');
  if (m.signature === undefined) {
    if (required) throw new EdgeqError('E_SIGNATURE_REQUIRED', `the manifest of ${m.name} ${m.version} is not signed, and this device requires signed manifests (deploy.requireSignature)`);
    return 'unsigned';
  }
  if (keys.length === 0) return 'not-checked';
  const sig = Buffer.from(m.signature, 'base64');
  const data = canonicalBytes(m);
  for (const k of keys) {
    try {
      if (verify(null, data, k, sig)) return 'verified';
    } catch {
      // A malformed signature (wrong length) verifies against no key.
    }
  }
  throw new EdgeqError('E_SIGNATURE_INVALID', `the signature of the manifest of ${m.name} ${m.version} does not verify with any of the ${keys.length} configured public key(s); refusing it`);
}
