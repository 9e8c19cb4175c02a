/** .npy files as model inputs: opened, bound to the model's inputs by name, checked to fit. */
import { EdgeqError } from './errors.js';
import type { InputInfo } from './feed.js';
import { NpyFile, readNpy } from './npy.js';

const NPY_FOR: Record<string, string> = { float32: 'float32', uint8: 'uint8', int8: 'int8', int32: 'int32', int64: 'int64', float64: 'float64' };

/** What the files are for, in error messages: 'calibration data' and '--calib', or 'data' and '--data'. */
export interface DataRole {
  what: string;
  flag: string;
}

export const CALIBRATION: DataRole = { what: 'calibration data', flag: '--calib' };

/** Opens one .npy file per input name ('' for the only input of a single-input model). */
export function openDataFiles(paths: Map<string, string>): Map<string, NpyFile> {
  const files = new Map<string, NpyFile>();
  try {
    for (const [name, path] of paths) files.set(name, NpyFile.open(path));
  } catch (e) {
    closeDataFiles(files);
    throw e;
  }
  return files;
}

export function closeDataFiles(files: Map<string, NpyFile>): void {
  for (const f of files.values()) f.close();
}

/**
 * Binds the files to the model's inputs (the unnamed file to the only input) and checks that
 * each fits: throws a clear E_SHAPE_MISMATCH / E_DTYPE_MISMATCH / E_CALIB_MISSING. Returns the
 * sample count, the same in every file.
 */
export function bindDataFiles(inputs: InputInfo[], files: Map<string, NpyFile>, role: DataRole = CALIBRATION): number {
  if (files.has('')) {
    if (inputs.length !== 1) {
      throw new EdgeqError('E_CALIB_MISSING', `the model has ${inputs.length} inputs (${inputs.map((i) => i.name).join(', ')}): give ${role.flag} NAME=FILE.npy for each`);
    }
    files.set(inputs[0].name, files.get('')!);
    files.delete('');
  }
  for (const name of files.keys()) {
    if (!inputs.some((i) => i.name === name)) {
      throw new EdgeqError('E_CALIB_MISSING', `${role.what} names input "${name}", which the model does not have (inputs: ${inputs.map((i) => i.name).join(', ')})`);
    }
  }
  let count = -1;
  for (const input of inputs) {
    const f = files.get(input.name);
    if (!f) throw new EdgeqError('E_CALIB_MISSING', `no ${role.what} for model input "${input.name}" (give ${role.flag} ${input.name}=FILE.npy)`);
    if (NPY_FOR[input.type] !== f.dtype) {
      throw new EdgeqError('E_DTYPE_MISMATCH', `${f.path}: dtype ${f.dtype} does not fit model input "${input.name}" of type ${input.type}`);
    }
    const want = input.shape;
    const got = f.shape;
    const fmt = (s: ReadonlyArray<number | string>) => `[${s.join(', ')}]`;
    if (got.length !== want.length) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `${f.path}: shape ${fmt(got)} does not fit model input "${input.name}" ${fmt(want)} (the first axis counts samples)`);
    }
    for (let d = 1; d < want.length; d++) {
      const w = want[d];
      if (typeof w === 'number' && w >= 0 && w !== got[d]) {
        throw new EdgeqError('E_SHAPE_MISMATCH', `${f.path}: shape ${fmt(got)} does not fit model input "${input.name}" ${fmt(want)}: axis ${d} is ${got[d]}, the model needs ${w}`);
      }
    }
    if (count >= 0 && f.count !== count) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `${role.what} files hold different sample counts (${count} and ${f.count} in ${f.path})`);
    }
    count = f.count;
  }
  if (count === 0) throw new EdgeqError('E_CALIB_EMPTY', `the ${role.what} holds no samples`);
  return count;
}


/**
 * Class labels: a 1-D integer .npy, one per sample. `exact`: the count must equal `samples`
 * (evaluation); otherwise at least `samples` (the first ones are used).
 */
export function readLabels(path: string, samples: number, what: string, exact = false): ArrayLike<number | bigint> {
  const { data, shape } = readNpy(path);
  if (shape.length !== 1 || !(data instanceof BigInt64Array || data instanceof Int32Array || data instanceof Uint8Array)) {
    throw new EdgeqError('E_SHAPE_MISMATCH', `${path}: labels must be a 1-D integer array (one class per sample), got ${data.constructor.name.replace('Array', '').toLowerCase()} shape [${shape.join(', ')}]`);
  }
  if (exact ? shape[0] !== samples : shape[0] < samples) {
    throw new EdgeqError('E_SHAPE_MISMATCH', `${path}: ${shape[0]} labels for ${samples} ${what}${exact ? ' (one label per sample)' : ''}`);
  }
  return data;
}
