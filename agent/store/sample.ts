/**
 * Pure functions on samples: their content hash, their split, and the check of a sample
 * against a model's declared inputs. No SQL here; the store and the capture writer share them.
 */
import { createHash } from 'node:crypto';
import { EdgeqError } from '../../quant/errors.js';
import { DTYPE_SIZE, isTensorDtype, type SampleTensor, type Split, type TensorSpec } from './types.js';

/**
 * sha256 of a sample's content: for each tensor in the given order, a 4-byte little-endian
 * length and the JSON of [name, dtype, shape], then the data bytes. Names, dtypes, shapes and
 * bytes all count, and the framing makes the encoding unambiguous.
 */
export function sampleHash(tensors: readonly SampleTensor[]): string {
  const h = createHash('sha256');
  const len = Buffer.alloc(4);
  for (const t of tensors) {
    const header = Buffer.from(JSON.stringify([t.name, t.dtype, t.shape]), 'utf8');
    len.writeUInt32LE(header.length, 0);
    h.update(len);
    h.update(header);
    len.writeUInt32LE(t.data.byteLength, 0);
    h.update(len);
    h.update(t.data);
  }
  return h.digest('hex');
}

/** The deterministic split of a sample: 'holdout' for ≈20% of hashes, 'calibration' otherwise. */
export function splitOf(sha256: string): Split {
  return parseInt(sha256.slice(0, 8), 16) % 5 === 0 ? 'holdout' : 'calibration';
}

/** A sample's source names where it came from (an endpoint, an import): 1 to 256 characters. */
export function checkSource(where: string, source: unknown): string {
  if (typeof source !== 'string' || source === '' || source.length > 256) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: source must be a name of 1 to 256 characters, got ${JSON.stringify(source)}`);
  return source;
}

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isDynamic(d: number | string): boolean {
  return typeof d === 'string' || d < 0;
}

function showSpecShape(shape: ReadonlyArray<number | string>): string {
  return `[${shape.map((d) => (isDynamic(d) ? (typeof d === 'string' ? d : '?') : String(d))).join(', ')}]`;
}

function showShape(shape: readonly unknown[]): string {
  return `[${shape.map((d) => String(d)).join(', ')}]`;
}

/**
 * Checks one sample against a model's inputs and returns its tensors in the model's input
 * order, or throws an EdgeqError naming the input and what is wrong:
 * E_CAPTURE_INVALID (missing, extra or duplicate input, bad bytes length, bad shape values),
 * E_DTYPE_MISMATCH, E_SHAPE_MISMATCH (rank, fixed dims, or a leading dim other than 1).
 */
export function checkSample(where: string, inputs: readonly TensorSpec[], tensors: readonly SampleTensor[]): SampleTensor[] {
  if (!Array.isArray(tensors) || tensors.length === 0) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: the sample has no tensors`);
  const byName = new Map<string, SampleTensor>();
  for (const t of tensors) {
    if (typeof t !== 'object' || t === null || typeof t.name !== 'string') throw new EdgeqError('E_CAPTURE_INVALID', `${where}: a tensor lacks a name`);
    if (byName.has(t.name)) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: input "${t.name}" appears twice`);
    byName.set(t.name, t);
  }
  const known = inputs.map((i) => i.name);
  for (const name of byName.keys()) {
    if (!known.includes(name)) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: the model has no input "${name}" (inputs: ${known.join(', ')})`);
  }
  const ordered: SampleTensor[] = [];
  for (const spec of inputs) {
    const t = byName.get(spec.name);
    if (!t) throw new EdgeqError('E_CAPTURE_INVALID', `${where}: input "${spec.name}" is missing (the model needs ${known.join(', ')})`);
    const at = `${where}, input "${spec.name}"`;
    if (!isTensorDtype(spec.dtype)) throw new EdgeqError('E_DTYPE_MISMATCH', `${at}: the model declares dtype ${spec.dtype}, which capture cannot store`);
    if (t.dtype !== spec.dtype) throw new EdgeqError('E_DTYPE_MISMATCH', `${at}: dtype ${String(t.dtype)} does not match the model's ${spec.dtype}`);
    if (!Array.isArray(t.shape) || t.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new EdgeqError('E_CAPTURE_INVALID', `${at}: shape ${Array.isArray(t.shape) ? showShape(t.shape) : String(t.shape)} is not a list of whole numbers`);
    }
    if (t.shape.length !== spec.shape.length) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `${at}: shape ${showShape(t.shape)} has rank ${t.shape.length}, the model expects ${showSpecShape(spec.shape)}`);
    }
    if (t.shape.length > 0 && t.shape[0] !== 1) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `${at}: shape ${showShape(t.shape)} is not one sample (the leading dim must be 1; split batches first)`);
    }
    spec.shape.forEach((d, i) => {
      if (!isDynamic(d) && t.shape[i] !== d) {
        throw new EdgeqError('E_SHAPE_MISMATCH', `${at}: shape ${showShape(t.shape)} does not match the model's ${showSpecShape(spec.shape)} (dim ${i} must be ${d})`);
      }
    });
    if (!(t.data instanceof Uint8Array)) throw new EdgeqError('E_CAPTURE_INVALID', `${at}: data must be a Uint8Array of raw bytes`);
    const want = elementCount(t.shape) * DTYPE_SIZE[spec.dtype];
    if (t.data.byteLength !== want) {
      throw new EdgeqError('E_CAPTURE_INVALID', `${at}: ${t.data.byteLength} bytes of data, shape ${showShape(t.shape)} of ${spec.dtype} needs ${want}`);
    }
    ordered.push(t);
  }
  return ordered;
}
