/**
 * Inputs for a benchmark run: the first `batch` samples of .npy files, or deterministic
 * pseudo-random data of the model's input shapes and types. Dynamic dimensions come from shape
 * overrides (`--shape NAME=1,3,224,224`); a dynamic leading (batch) dimension takes the batch size.
 */
import { rng } from './random.js';
import { EdgeqError } from './errors.js';
import type { InputInfo } from './feed.js';
import { NpyFile } from './npy.js';
import { ort } from './runtime.js';

/** One model input as it was fed. */
export interface BenchInput {
  name: string;
  shape: number[];
  dtype: string;
  source: 'data' | 'random';
}

export interface BenchFeedOptions {
  /** Samples per run (the leading axis). Default: the model's fixed batch, else 1. */
  batch?: number;
  /** .npy file per input name; '' is the only input of a single-input model. */
  data?: ReadonlyMap<string, string>;
  /** Full shape per input name (leading axis included); '' is the only input of a single-input model. */
  shapes?: ReadonlyMap<string, readonly number[]>;
  /** Seed of the random data (default 1). */
  seed?: number;
}

export interface BenchFeeds {
  feeds: Record<string, ort.Tensor>;
  inputs: BenchInput[];
  /** The batch size the feeds carry (for throughput). */
  batch: number;
}

/** Largest tensor we make up: 2^28 elements (1 GiB of float32). */
const MAX_ELEMENTS = 2 ** 28;

/** The npy dtype that holds each ORT input type, where there is one. */
const NPY_FOR: Partial<Record<string, string>> = { float32: 'float32', float64: 'float64', uint8: 'uint8', int8: 'int8', int32: 'int32', int64: 'int64' };

/** The model's inputs, as ORT reports them (only tensor inputs can be benchmarked). */
export function sessionInputs(session: ort.InferenceSession): InputInfo[] {
  return session.inputMetadata.map((m) => {
    if (!m.isTensor) throw new EdgeqError('E_MODEL_UNSUPPORTED', `model input "${m.name}" is not a tensor; edgeq bench feeds tensors only`);
    return { name: m.name, type: m.type, shape: [...m.shape] };
  });
}

const isStatic = (d: number | string): d is number => typeof d === 'number' && Number.isInteger(d) && d >= 0;
const fmt = (s: ReadonlyArray<number | string>) => `[${s.join(', ')}]`;

/** Resolves a per-name map where '' stands for the only input of a single-input model. */
function byInput<V>(map: ReadonlyMap<string, V> | undefined, inputs: InputInfo[], flag: string): Map<string, V> {
  const out = new Map<string, V>();
  if (!map) return out;
  const names = inputs.map((i) => i.name).join(', ');
  for (const [name, v] of map) {
    if (name === '') {
      if (inputs.length !== 1) throw new EdgeqError('E_ARGUMENT', `the model has ${inputs.length} inputs (${names}): name the input, as ${flag} NAME=…`);
      out.set(inputs[0].name, v);
    } else {
      if (!inputs.some((i) => i.name === name)) throw new EdgeqError('E_ARGUMENT', `${flag} names input "${name}", which the model does not have (inputs: ${names})`);
      out.set(name, v);
    }
  }
  return out;
}

/** The batch size: --batch, else the model's fixed leading dimension, else a --shape override's, else 1. */
function resolveBatch(inputs: InputInfo[], shapes: Map<string, readonly number[]>, wanted: number | undefined): number {
  const fixed = inputs.find((i) => i.shape.length > 0 && isStatic(i.shape[0]));
  if (fixed) {
    const k = fixed.shape[0] as number;
    if (wanted !== undefined && wanted !== k) {
      throw new EdgeqError('E_ARGUMENT', `the model takes a fixed batch of ${k} (input "${fixed.name}" is ${fmt(fixed.shape)}): --batch ${wanted} does not fit`);
    }
    return k;
  }
  if (wanted !== undefined) return wanted;
  for (const i of inputs) {
    const s = shapes.get(i.name);
    if (s && s.length > 0 && i.shape.length > 0) return s[0];
  }
  return 1;
}

/** The shape to feed input `i` (without data), or a clear error saying which --shape is missing. */
function resolveShape(i: InputInfo, batch: number, override: readonly number[] | undefined, explicitBatch: boolean): number[] {
  if (override) {
    // ORT reports an input of unknown rank as []: then the override alone decides.
    if (i.shape.length > 0 && override.length !== i.shape.length) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `--shape ${i.name}=${override.join(',')} has ${override.length} dimensions, model input "${i.name}" ${fmt(i.shape)} has ${i.shape.length}`);
    }
    i.shape.forEach((d, k) => {
      if (isStatic(d) && override[k] !== d) {
        throw new EdgeqError('E_SHAPE_MISMATCH', `--shape ${i.name}=${override.join(',')} does not fit model input "${i.name}" ${fmt(i.shape)}: dimension ${k} is fixed at ${d}`);
      }
    });
    if (explicitBatch && i.shape.length > 0 && !isStatic(i.shape[0]) && override[0] !== batch) {
      throw new EdgeqError('E_ARGUMENT', `--shape ${i.name}=${override.join(',')} sets the batch to ${override[0]}, but --batch is ${batch}`);
    }
    return [...override];
  }
  return i.shape.map((d, k) => {
    if (isStatic(d)) return d;
    if (k === 0) return batch;
    const dims = i.shape.map((x, j) => (j === 0 && !isStatic(x) ? batch : x));
    throw new EdgeqError(
      'E_ARGUMENT',
      `model input "${i.name}" ${fmt(i.shape)} has a dynamic dimension ${k}${typeof d === 'string' && d ? ` ("${d}")` : ''}: pass --shape ${i.name}=${dims.map((x) => (isStatic(x) ? x : `<${x || '?'}>`)).join(',')} with a size for it`,
    );
  });
}

function seedOf(name: string, seed: number): number {
  let h = 2166136261 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** IEEE half-precision bits of a float (round to nearest; the values here are small and normal). */
function toHalf(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | (((u & 0x7fffff) + 0x1000) >>> 13);
}

/**
 * Deterministic pseudo-random tensor: floats roughly standard normal (sum of four uniforms,
 * rescaled), integers in [0, 10) so they are valid indices into most embeddings, bools half true.
 */
export function randomTensor(type: string, shape: readonly number[], seed: number): ort.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const next = rng(seed);
  const normal = () => (next() + next() + next() + next() - 2) * Math.sqrt(3);
  const small = () => Math.floor(next() * 10);
  const dims = [...shape];
  switch (type) {
    case 'float32': return new ort.Tensor('float32', Float32Array.from({ length: n }, normal), dims);
    case 'float64': return new ort.Tensor('float64', Float64Array.from({ length: n }, normal), dims);
    case 'float16': return new ort.Tensor('float16', Uint16Array.from({ length: n }, () => toHalf(normal())), dims);
    case 'int8': return new ort.Tensor('int8', Int8Array.from({ length: n }, small), dims);
    case 'uint8': return new ort.Tensor('uint8', Uint8Array.from({ length: n }, small), dims);
    case 'int16': return new ort.Tensor('int16', Int16Array.from({ length: n }, small), dims);
    case 'uint16': return new ort.Tensor('uint16', Uint16Array.from({ length: n }, small), dims);
    case 'int32': return new ort.Tensor('int32', Int32Array.from({ length: n }, small), dims);
    case 'uint32': return new ort.Tensor('uint32', Uint32Array.from({ length: n }, small), dims);
    case 'int64': return new ort.Tensor('int64', BigInt64Array.from({ length: n }, () => BigInt(small())), dims);
    case 'uint64': return new ort.Tensor('uint64', BigUint64Array.from({ length: n }, () => BigInt(small())), dims);
    case 'bool': return new ort.Tensor('bool', Uint8Array.from({ length: n }, () => (next() < 0.5 ? 1 : 0)), dims);
    default: throw new EdgeqError('E_MODEL_UNSUPPORTED', `edgeq bench cannot make up data of type ${type}; give --data for this input`);
  }
}

/** The first `batch` samples of an .npy file, checked against model input `i`. */
function dataTensor(i: InputInfo, path: string, batch: number, override: readonly number[] | undefined): { tensor: ort.Tensor; shape: number[] } {
  const f = NpyFile.open(path);
  try {
    if (NPY_FOR[i.type] !== f.dtype) {
      throw new EdgeqError('E_DTYPE_MISMATCH', `${path}: dtype ${f.dtype} does not fit model input "${i.name}" of type ${i.type}`);
    }
    const want = override ?? i.shape;
    if (f.shape.length === 0 || (want.length > 0 && f.shape.length !== want.length)) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `${path}: shape ${fmt(f.shape)} does not fit model input "${i.name}" ${fmt(want)} (the first axis counts samples)`);
    }
    for (let d = 1; d < want.length; d++) {
      const w = want[d];
      if (isStatic(w) && w !== f.shape[d]) {
        throw new EdgeqError('E_SHAPE_MISMATCH', `${path}: shape ${fmt(f.shape)} does not fit model input "${i.name}" ${fmt(want)}: axis ${d} is ${f.shape[d]}, the model needs ${w}`);
      }
    }
    if (f.count < batch) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `${path} holds ${f.count} sample${f.count === 1 ? '' : 's'}, a batch of ${batch} needs ${batch}`);
    }
    const shape = [batch, ...f.shape.slice(1)];
    return { tensor: new ort.Tensor(i.type as 'float32', f.read(0, batch) as Float32Array, shape), shape };
  } finally {
    f.close();
  }
}

/** Feeds for every model input: from `data` where given, else deterministic random data. */
export function buildFeeds(inputs: InputInfo[], opts: BenchFeedOptions = {}): BenchFeeds {
  const data = byInput(opts.data, inputs, '--data');
  const shapes = byInput(opts.shapes, inputs, '--shape');
  const batch = resolveBatch(inputs, shapes, opts.batch);
  const feeds: Record<string, ort.Tensor> = {};
  const fed: BenchInput[] = [];
  for (const i of inputs) {
    const override = shapes.get(i.name);
    const path = data.get(i.name);
    if (path !== undefined) {
      const { tensor, shape } = dataTensor(i, path, batch, override);
      feeds[i.name] = tensor;
      fed.push({ name: i.name, shape, dtype: i.type, source: 'data' });
      continue;
    }
    const shape = resolveShape(i, batch, override, opts.batch !== undefined);
    const n = shape.reduce((a, b) => a * b, 1);
    if (n > MAX_ELEMENTS) throw new EdgeqError('E_ARGUMENT', `input "${i.name}" of shape ${fmt(shape)} has ${n} elements, more than edgeq bench makes up (${MAX_ELEMENTS})`);
    feeds[i.name] = randomTensor(i.type, shape, seedOf(i.name, opts.seed ?? 1));
    fed.push({ name: i.name, shape, dtype: i.type, source: 'random' });
  }
  return { feeds, inputs: fed, batch };
}
