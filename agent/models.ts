/**
 * Models on the device: an fp32 file registered under a name becomes version 1, copied into the
 * state directory under its sha256 (the copy is what serves and calibrates, so moving or editing
 * the original changes nothing).
 */
import { closeSync, copyFileSync, existsSync, fchmodSync, fsyncSync, mkdirSync, openSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { EdgeqError, fsError } from '../quant/errors.js';
import { sha256File } from '../quant/hash.js';
import { allTensors, readModel } from '../quant/onnx/model.js';
import { openSession } from '../quant/runtime.js';
import { TensorProto_DataLocation } from 'onnx-buf';
import type { ModelKind, ModelVersion, Store, TensorSpec } from './store/index.js';
import { modelsDir } from './state.js';

/** The model's inputs as ONNX Runtime sees them. */
export async function modelInputs(path: string): Promise<TensorSpec[]> {
  const s = await openSession(path, { threads: 1, optimization: 'disabled' });
  try {
    return s.inputMetadata.map((m) => {
      if (!m.isTensor) throw new EdgeqError('E_MODEL_UNSUPPORTED', `${path}: input "${m.name}" is not a tensor`);
      return { name: m.name, dtype: m.type, shape: [...m.shape] };
    });
  } finally {
    await s.release();
  }
}

/** Copies `src` to `dir/<sha256>.onnx` (temp name, fsync, rename); returns the path. */
function storeFile(src: string, dir: string, sha256: string): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const dest = join(dir, `${sha256}.onnx`);
  if (existsSync(dest)) return dest;
  const tmp = `${dest}.${process.pid}.tmp`;
  try {
    copyFileSync(src, tmp);
    const fd = openSync(tmp, 'r+');
    try {
      // copyFile keeps the source's mode; the state directory's files are its owner's only.
      fchmodSync(fd, 0o600);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, dest);
  } catch (e) {
    try { unlinkSync(tmp); } catch { /* not created */ }
    throw fsError(e, dest, true);
  }
  return dest;
}

/**
 * Registers a model file as the next version of `name` (version 1 for a new name) and makes it
 * active when the model has no active version yet.
 */
export async function registerModel(store: Store, stateDir: string, name: string, file: string, kind: ModelKind = 'fp32', parentVersion?: number): Promise<ModelVersion> {
  const model = readModel(file, { externalData: 'keep' });
  for (const t of allTensors(model.graph!)) {
    if (t.dataLocation === TensorProto_DataLocation.EXTERNAL) {
      throw new EdgeqError('E_MODEL_UNSUPPORTED', `${file} keeps tensor "${t.name}" in an external data file; registering such models is not supported yet (save it as one .onnx file)`);
    }
  }
  const inputs = await modelInputs(file);
  const sha256 = await sha256File(file);
  const path = storeFile(file, modelsDir(stateDir), sha256);
  const { size } = statSync(path);
  const v = store.addModelVersion(name, { kind, path, sha256, sizeBytes: size, inputs, ...(parentVersion ? { parentVersion } : {}) });
  if (!store.activeVersion(name)) store.setActive(name, v.version);
  return v;
}
