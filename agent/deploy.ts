/**
 * Deploying model artifacts into the store: the glue between deploy/ (fetch, verify, files)
 * and the SQLite store.
 *
 * deployManifest: signature → existing release? → disk space → fetch (resumable, verified while
 * streaming) → ONNX Runtime warm-up (load + one inference on deterministic random inputs) →
 * add the version and make it active in ONE durable transaction → prune old versions and the
 * files no version references any more.
 *
 * Crash consistency: the only switch is that transaction. Files are written (temp name, fsync,
 * rename, directory fsync) before it, and removed only after it; a version's row exists only once
 * its file is complete. A crash at any point leaves the previous active version active (or the
 * new one, if the commit happened), a resumable .part, or a complete but unreferenced file that
 * the next deploy of the same sha256 reuses (and prune or cleanStray removes otherwise).
 */
import { existsSync, statSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { EdgeqError, isEdgeqError } from '../quant/errors.js';
import { randomTensor } from '../quant/bench-inputs.js';
import { sha256File } from '../quant/hash.js';
import { openSession, type ort } from '../quant/runtime.js';
import { readModel } from '../quant/onnx/model.js';
import { artifactSource, type Manifest } from '../deploy/manifest.js';
import { checkSignature, loadPublicKeys, type SignatureOutcome } from '../deploy/signature.js';
import { checkSpace } from '../deploy/space.js';
import { fetchArtifact, type FetchResult } from '../deploy/fetch.js';
import { artifactPath, cleanStray, ensureDir, fsyncDir, lockArtifact, partPath } from '../deploy/files.js';
import { pauseAt } from '../deploy/pause.js';
import type { DeployConfig } from './config.js';
import type { ModelVersion, Store, TensorSpec } from './store/index.js';
import { modelsDir } from './state.js';

export const DEFAULT_KEEP_VERSIONS = 3;

export interface DeployOptions {
  config?: DeployConfig;
  /** Directory relative manifest paths are taken from (the manifest file's). */
  baseDir?: string;
  onProgress?: (bytes: number, size: number) => void;
}

export interface DeployResult {
  model: string;
  version: number;
  release: string;
  sha256: string;
  sizeBytes: number;
  signature: SignatureOutcome;
  /** 'downloaded' (fetched now), 'cached' (the file was already on the device), 'activated-existing' (the release was deployed before and is active again), 'already-active'. */
  outcome: 'downloaded' | 'cached' | 'activated-existing' | 'already-active';
  /** Bytes of an interrupted download that were reused. */
  resumedFrom: number;
  transferred: number;
  rangeIgnored: boolean;
  previous: number | null;
  /** Whether the version is on probation (agent/probation.ts) after this deploy. */
  pending: boolean;
  pruned: Array<{ version: number; release?: string; fileRemoved: boolean }>;
  strayRemoved: string[];
}

/** Loads the model in ONNX Runtime and runs one inference on deterministic inputs; returns its inputs. */
export async function warmUp(path: string): Promise<TensorSpec[]> {
  let session: ort.InferenceSession;
  try {
    // Our own reader first: it refuses tensors whose dims promise more values than they hold.
    // ONNX Runtime itself would allocate them (a 6 KB file can ask for gigabytes) and take the
    // daemon down with it (docs/fuzzing.md, finding 5).
    readModel(path, { externalData: 'keep' });
    session = await openSession(path, { threads: 1, spin: false });
  } catch (e) {
    throw new EdgeqError('E_WARMUP_FAILED', `warm-up failed: ${(e as Error).message}`, { cause: e });
  }
  try {
    const feeds: Record<string, ort.Tensor> = {};
    const inputs: TensorSpec[] = [];
    session.inputMetadata.forEach((m, k) => {
      if (!m.isTensor) throw new EdgeqError('E_WARMUP_FAILED', `warm-up failed: input "${m.name}" is not a tensor`);
      inputs.push({ name: m.name, dtype: m.type, shape: [...m.shape] });
      const shape = m.shape.map((d) => (typeof d === 'number' && Number.isInteger(d) && d >= 0 ? d : 1));
      feeds[m.name] = randomTensor(m.type, shape, 1 + k);
    });
    try {
      await session.run(feeds);
    } catch (e) {
      throw new EdgeqError('E_WARMUP_FAILED', `warm-up failed: ONNX Runtime could not run ${path}: ${(e as Error).message.split('\n')[0]}`, { cause: e });
    }
    return inputs;
  } catch (e) {
    if (isEdgeqError(e) && e.code === 'E_WARMUP_FAILED') throw e;
    throw new EdgeqError('E_WARMUP_FAILED', `warm-up failed: ${(e as Error).message}`, { cause: e });
  } finally {
    await session.release();
  }
}

function removeIfUnreferenced(store: Store, dir: string, path: string): boolean {
  if (store.pathReferenced(path) || dirname(path) !== dir || !existsSync(path)) return false;
  try {
    unlinkSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Keeps the newest `keep` versions of `name` (and the active one), deletes the rest and their unreferenced files. */
export function pruneModel(store: Store, stateDir: string, name: string, keep: number): DeployResult['pruned'] {
  const dir = modelsDir(stateDir);
  const gone = store.pruneVersions(name, keep);
  const out = gone.map((v) => ({ version: v.version, ...(v.release !== undefined ? { release: v.release } : {}), fileRemoved: removeIfUnreferenced(store, dir, v.path) }));
  if (out.some((p) => p.fileRemoved)) fsyncDir(dir);
  return out;
}

export interface Activation {
  version: ModelVersion;
  previous: ModelVersion | undefined;
  /** On probation until it has served (agent/probation.ts). */
  pending: boolean;
}

function isPending(store: Store, v: ModelVersion): boolean {
  return store.pendingActivation(v.model)?.version === v.version;
}

/** Why a model with inputs `next` cannot replace one with inputs `prev` (clients would break), or undefined. */
export function inputsProblem(prev: TensorSpec[], next: TensorSpec[]): string | undefined {
  const show = (s: TensorSpec) => `${s.name} [${s.shape.join(', ')}] ${s.dtype}`;
  const byName = new Map(next.map((s) => [s.name, s]));
  const problems: string[] = [];
  for (const p of prev) {
    const n = byName.get(p.name);
    if (!n) problems.push(`input ${p.name} is gone`);
    else if (n.dtype !== p.dtype || n.shape.length !== p.shape.length || n.shape.some((d, i) => (typeof d === 'number' || typeof p.shape[i] === 'number') && d !== p.shape[i])) {
      problems.push(`input ${show(p)} became ${show(n)}`);
    }
    byName.delete(p.name);
  }
  for (const n of byName.values()) problems.push(`new input ${show(n)}`);
  return problems.length ? problems.join('; ') : undefined;
}

/** Whether `v`'s file is there and hashes to its sha256. */
export async function fileIntact(v: ModelVersion): Promise<boolean> {
  if (!existsSync(v.path)) return false;
  try {
    return (await sha256File(v.path)) === v.sha256;
  } catch {
    return false;
  }
}

/** Fetches, verifies, warms up and activates the model a manifest names (see the module comment). */
export async function deployManifest(store: Store, stateDir: string, manifest: Manifest, opts: DeployOptions = {}): Promise<DeployResult> {
  const cfg = opts.config ?? {};
  const signature = checkSignature(manifest, loadPublicKeys(cfg.publicKeys ?? []), cfg.requireSignature ?? false);
  const dir = modelsDir(stateDir);
  ensureDir(dir);
  const strayRemoved = cleanStray(dir);
  const keep = cfg.keepVersions ?? DEFAULT_KEEP_VERSIONS;
  const base = {
    model: manifest.name, release: manifest.version, sha256: manifest.sha256, sizeBytes: manifest.size, signature,
    resumedFrom: 0, transferred: 0, rangeIgnored: false,
  };

  const existing = store.findRelease(manifest.name, manifest.version);
  if (existing) {
    if (existing.sha256 !== manifest.sha256) {
      throw new EdgeqError('E_RELEASE_CONFLICT', `model "${manifest.name}" release ${manifest.version} is already deployed (v${existing.version}) with sha256 ${existing.sha256.slice(0, 12)}…, this manifest says ${manifest.sha256.slice(0, 12)}…; publish a new version instead`);
    }
    const active = store.activeVersion(manifest.name);
    if (active?.version === existing.version) {
      return { ...base, version: existing.version, outcome: 'already-active', previous: active.version, pending: isPending(store, active), pruned: [], strayRemoved };
    }
    const { previous, pending } = await activateVersion(store, manifest.name, existing.version);
    return { ...base, version: existing.version, outcome: 'activated-existing', previous: previous?.version ?? null, pending, pruned: pruneModel(store, stateDir, manifest.name, keep), strayRemoved };
  }

  const source = artifactSource(manifest, opts.baseDir);
  const release = lockArtifact(dir, manifest.sha256);
  try {
    const part = partPath(dir, manifest.sha256);
    const alreadyHave = existsSync(part) ? statSync(part).size : 0;
    if (!existsSync(artifactPath(dir, manifest.sha256))) checkSpace(dir, manifest.size, { minFreeBytes: cfg.minFreeBytes, alreadyHave });
    const fetched: FetchResult = await fetchArtifact(source, {
      dir, sha256: manifest.sha256, size: manifest.size, maxBytes: cfg.maxBytes, timeoutMs: cfg.timeoutMs, allow: cfg.allow ?? [], onProgress: opts.onProgress,
    });
    let inputs: TensorSpec[];
    try {
      inputs = await warmUp(fetched.path);
      const current = store.activeVersion(manifest.name);
      const problem = current && inputsProblem(current.inputs, inputs);
      if (problem) throw new EdgeqError('E_INPUTS_CHANGED', `${manifest.name} release ${manifest.version} does not take the inputs of the active v${current.version}: ${problem}; deploy it under a new model name`);
    } catch (e) {
      removeIfUnreferenced(store, dir, fetched.path);
      throw e;
    }
    await pauseAt('activate');
    const { version, previous } = store.addAndActivate(manifest.name, {
      kind: manifest.kind ?? 'fp32', path: fetched.path, sha256: manifest.sha256, sizeBytes: manifest.size, inputs,
      release: manifest.version, source: manifest.url,
    });
    await pauseAt('activated');
    return {
      ...base, version: version.version, outcome: fetched.cached ? 'cached' : 'downloaded',
      resumedFrom: fetched.resumedFrom, transferred: fetched.transferred, rangeIgnored: fetched.rangeIgnored,
      previous: previous?.version ?? null, pending: isPending(store, version), pruned: pruneModel(store, stateDir, manifest.name, keep), strayRemoved,
    };
  } finally {
    release();
  }
}

/**
 * Makes `version` of `name` active after checking its file (present, right sha256) and a warm-up
 * inference; if either fails the active version stays. Returns the version and the one it replaced.
 * Unless `probation` is false the new version is pending until it has served (agent/probation.ts).
 */
export async function activateVersion(store: Store, name: string, version: number, opts: { probation?: boolean } = {}): Promise<Activation> {
  const v = store.getVersion(name, version);
  if (!v) throw new EdgeqError('E_MODEL_UNKNOWN', store.hasModel(name) ? `model "${name}" has no version ${version}` : `no model named "${name}" in the store`);
  if (!(await fileIntact(v))) throw new EdgeqError('E_FILE_NOT_FOUND', `the file of ${name} v${version} (${v.path}) is missing or damaged; it cannot be activated`);
  await warmUp(v.path);
  const previous = store.activeVersion(name);
  store.setActive(name, version, opts);
  return { version: v, previous, pending: isPending(store, v) };
}

/**
 * Activates the version created before the active one (skipping versions whose file is gone),
 * without probation (it is going back); E_NO_PREVIOUS if there is none.
 */
export async function rollbackModel(store: Store, name: string): Promise<Activation> {
  if (!store.hasModel(name)) throw new EdgeqError('E_MODEL_UNKNOWN', `no model named "${name}" in the store`);
  const active = store.activeVersion(name);
  const older = store.listVersions(name).filter((v) => active === undefined || v.version < active.version).reverse();
  for (const v of older) {
    if (await fileIntact(v)) return activateVersion(store, name, v.version, { probation: false });
  }
  throw new EdgeqError('E_NO_PREVIOUS', `model "${name}" has no version before ${active ? `v${active.version}` : 'the active one'} to roll back to`);
}

/** `NAME@VERSION` → a version of the store: `vN` is store version N; otherwise a release string, else a store version number. */
export function resolveVersionRef(store: Store, ref: string): ModelVersion {
  const at = ref.lastIndexOf('@');
  if (at <= 0 || at === ref.length - 1) throw new EdgeqError('E_ARGUMENT', `expected NAME@VERSION (e.g. fmnist@1.4.0 or fmnist@v3), got ${JSON.stringify(ref)}`);
  const name = ref.slice(0, at);
  const ver = ref.slice(at + 1);
  if (!store.hasModel(name)) throw new EdgeqError('E_MODEL_UNKNOWN', `no model named "${name}" in the store`);
  const vn = /^v(\d+)$/.exec(ver);
  const found = vn ? store.getVersion(name, Number(vn[1])) : store.findRelease(name, ver) ?? (/^\d+$/.test(ver) ? store.getVersion(name, Number(ver)) : undefined);
  if (!found) throw new EdgeqError('E_MODEL_UNKNOWN', `model "${name}" has no version ${JSON.stringify(ver)} (use a release string from the manifest, or vN for store version N)`);
  return found;
}
