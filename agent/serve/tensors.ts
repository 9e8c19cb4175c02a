/**
 * Request bodies to validated input tensors, and output tensors to reply bodies. Everything a
 * client sends is checked against the session's input metadata before ONNX Runtime sees it, so
 * a bad request is a 4xx naming the problem, never a runtime failure.
 */
import { EdgeqError } from '../../quant/errors.js';
import { parseNpy } from '../../quant/npy.js';
import type { ort } from '../../quant/runtime.js';
import type { SampleTensor } from './types.js';

/** One model input as the session describes it; string or negative dims are dynamic. */
export interface InputSpec {
  name: string;
  /** ORT type name, or 'non-tensor' for sequences and maps. */
  type: string;
  /** Empty when the model does not say. */
  shape: ReadonlyArray<number | string>;
}

export type ServedDtype = 'float32' | 'float64' | 'int8' | 'uint8' | 'int16' | 'uint16' | 'int32' | 'uint32' | 'int64' | 'uint64' | 'bool';
export type InputArray = Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array;

/** A validated input, ready for ORT and for capture. */
export interface DecodedInput {
  name: string;
  dtype: ServedDtype;
  shape: number[];
  data: InputArray;
}

/** Deeper nesting than this is refused before it is walked. */
export const MAX_RANK = 32;

const INT_RANGE: Partial<Record<ServedDtype, [number, number]>> = {
  int8: [-128, 127], uint8: [0, 255], int16: [-32768, 32767], uint16: [0, 65535], int32: [-(2 ** 31), 2 ** 31 - 1], uint32: [0, 2 ** 32 - 1],
};
const BIG_RANGE: Partial<Record<ServedDtype, [bigint, bigint]>> = {
  int64: [-(2n ** 63n), 2n ** 63n - 1n], uint64: [0n, 2n ** 64n - 1n],
};

function isServed(type: string): type is ServedDtype {
  return type in ALLOC;
}

const ALLOC: Record<ServedDtype, (n: number) => InputArray> = {
  float32: (n) => new Float32Array(n),
  float64: (n) => new Float64Array(n),
  int8: (n) => new Int8Array(n),
  uint8: (n) => new Uint8Array(n),
  int16: (n) => new Int16Array(n),
  uint16: (n) => new Uint16Array(n),
  int32: (n) => new Int32Array(n),
  uint32: (n) => new Uint32Array(n),
  int64: (n) => new BigInt64Array(n),
  uint64: (n) => new BigUint64Array(n),
  bool: (n) => new Uint8Array(n),
};

export function inputSpecs(session: ort.InferenceSession): InputSpec[] {
  return session.inputMetadata.map((m) => (m.isTensor ? { name: m.name, type: m.type, shape: m.shape } : { name: m.name, type: 'non-tensor', shape: [] }));
}

function fmtShape(shape: ReadonlyArray<number | string>): string {
  return `[${shape.map((d) => (typeof d === 'number' && d >= 0 ? String(d) : typeof d === 'string' && d !== '' ? d : '?')).join(', ')}]`;
}

function quote(s: string): string {
  const j = JSON.stringify(s);
  return j.length > 80 ? `${j.slice(0, 77)}…"` : j;
}

function describe(v: unknown): string {
  if (typeof v === 'string') return quote(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return String(v);
}

function ensureServed(spec: InputSpec): ServedDtype {
  if (!isServed(spec.type)) {
    throw new EdgeqError('E_MODEL_UNSUPPORTED', `input ${quote(spec.name)} is of type ${spec.type}, which the endpoint does not serve (it serves ${Object.keys(ALLOC).join(', ')})`);
  }
  return spec.type;
}

/** Checks a request's shape against the model's: same rank, fixed dims equal, dynamic dims free. */
export function checkShape(spec: InputSpec, shape: readonly number[]): void {
  const want = spec.shape;
  const mismatch = () => new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(spec.name)} takes shape ${fmtShape(want)}, got ${fmtShape(shape)}`);
  if (want.length > 0) {
    if (want.length !== shape.length) throw mismatch();
    for (let i = 0; i < want.length; i++) {
      const d = want[i];
      if (typeof d === 'number' && d >= 0 && d !== shape[i]) throw mismatch();
    }
  }
  if (shape.some((d) => d === 0)) throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(spec.name)} has shape ${fmtShape(shape)}, which holds no values`);
}

/** Largest input tensor a request may carry, in elements, unless the server is told otherwise (serve.maxElements). */
export const DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024;

/** Refuses a tensor of more than `max` elements before anything is allocated for it. */
function checkElements(name: string, shape: readonly number[], max: number): void {
  const n = product(shape);
  if (n > max) throw new EdgeqError('E_TENSOR_TOO_LARGE', `input ${quote(name)} has shape ${fmtShape(shape)}: ${n} elements, more than the ${max} this endpoint accepts (serve.maxElements)`);
}

/**
 * Dims the model gives one name (the batch "N" of two inputs) are one size in a request, as
 * ONNX defines them. ONNX Runtime does not check this itself: an op then fails at run time.
 */
function checkDimNames(specs: InputSpec[], inputs: DecodedInput[]): void {
  const seen = new Map<string, { size: number; input: string }>();
  inputs.forEach((d, i) => specs[i].shape.forEach((dim, k) => {
    if (typeof dim !== 'string' || dim === '' || k >= d.shape.length) return;
    const s = seen.get(dim);
    if (!s) seen.set(dim, { size: d.shape[k], input: d.name });
    else if (s.size !== d.shape[k]) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `dim ${quote(dim)} is ${s.size} in input ${quote(s.input)} and ${d.shape[k]} in input ${quote(d.name)}; the model names both ${quote(dim)}, so they must be equal`);
    }
  }));
}

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The shape a nested array implies, following first elements (rank bounded). */
function nestedShape(data: unknown[], name: string): number[] {
  const shape: number[] = [];
  let cur: unknown = data;
  while (Array.isArray(cur)) {
    if (shape.length >= MAX_RANK) throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: data is nested more than ${MAX_RANK} deep`);
    shape.push(cur.length);
    if (cur.length === 0) break;
    cur = cur[0];
  }
  return shape;
}

type Writer = (v: unknown, i: number) => void;

function writerFor(dtype: ServedDtype, out: InputArray, name: string): Writer {
  const notNumber = (v: unknown, i: number) => new EdgeqError('E_INPUT_INVALID', `input ${quote(name)}: data[${i}] is ${describe(v)}, not a number`);
  const notType = (v: unknown, i: number, why: string) => new EdgeqError('E_DTYPE_MISMATCH', `input ${quote(name)} is ${dtype}: data[${i}] = ${describe(v)} ${why}`);
  if (dtype === 'float32' || dtype === 'float64') {
    const a = out as Float32Array | Float64Array;
    return (v, i) => {
      if (typeof v !== 'number') throw notNumber(v, i);
      a[i] = v;
    };
  }
  if (dtype === 'bool') {
    const a = out as Uint8Array;
    return (v, i) => {
      if (v === true || v === 1) a[i] = 1;
      else if (v === false || v === 0) a[i] = 0;
      else if (typeof v === 'number') throw notType(v, i, 'is not a boolean (true, false, 1 or 0)');
      else throw new EdgeqError('E_INPUT_INVALID', `input ${quote(name)}: data[${i}] is ${describe(v)}, not a boolean`);
    };
  }
  const big = BIG_RANGE[dtype];
  if (big) {
    const a = out as BigInt64Array | BigUint64Array;
    return (v, i) => {
      let b: bigint;
      if (typeof v === 'number') {
        if (!Number.isSafeInteger(v)) throw notType(v, i, Number.isInteger(v) ? 'is beyond 2^53; send it as a string of digits' : 'is not an integer');
        b = BigInt(v);
      } else if (typeof v === 'string' && /^-?[0-9]{1,20}$/.test(v)) b = BigInt(v);
      else throw notNumber(v, i);
      if (b < big[0] || b > big[1]) throw notType(v, i, 'is out of range');
      a[i] = b;
    };
  }
  const [lo, hi] = INT_RANGE[dtype]!;
  const a = out as Exclude<InputArray, BigInt64Array | BigUint64Array | Float32Array | Float64Array>;
  return (v, i) => {
    if (typeof v !== 'number') throw notNumber(v, i);
    if (!Number.isInteger(v)) throw notType(v, i, 'is not an integer');
    if (v < lo || v > hi) throw notType(v, i, `is out of range ${lo}..${hi}`);
    a[i] = v;
  };
}

/** Writes nested data of the given shape in C order; anything ragged is a shape error. */
function fill(data: unknown[], shape: number[], write: Writer, name: string): void {
  let i = 0;
  const ragged = () => new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: nested data is ragged (its first elements imply shape ${fmtShape(shape)})`);
  const walk = (node: unknown, depth: number): void => {
    if (!Array.isArray(node) || node.length !== shape[depth]) throw ragged();
    if (depth === shape.length - 1) {
      for (const v of node) {
        if (Array.isArray(v)) throw ragged();
        write(v, i++);
      }
    } else for (const child of node) walk(child, depth + 1);
  };
  walk(data, 0);
}

function decodeJsonInput(spec: InputSpec, value: unknown, bodyLength: number, maxElements: number): DecodedInput {
  const name = spec.name;
  const dtype = ensureServed(spec);
  if (!isObject(value)) throw new EdgeqError('E_INPUT_INVALID', `input ${quote(name)} must be an object {"shape": [...], "data": [...]}, got ${describe(value)}`);
  for (const k of Object.keys(value)) {
    if (k !== 'shape' && k !== 'data' && k !== 'dtype') throw new EdgeqError('E_INPUT_INVALID', `input ${quote(name)}: unknown field ${quote(k)} (fields: shape, data, dtype)`);
  }
  if (value.dtype !== undefined) {
    if (typeof value.dtype !== 'string') throw new EdgeqError('E_INPUT_INVALID', `input ${quote(name)}: dtype must be a string, got ${describe(value.dtype)}`);
    if (value.dtype !== dtype) throw new EdgeqError('E_DTYPE_MISMATCH', `input ${quote(name)} is ${dtype}, the request says ${quote(value.dtype)}`);
  }
  const data = value.data;
  if (!Array.isArray(data)) throw new EdgeqError('E_INPUT_INVALID', `input ${quote(name)}: data must be an array of numbers (flat or nested), got ${data === undefined ? 'nothing' : describe(data)}`);
  let declared: number[] | undefined;
  if (value.shape !== undefined) {
    const s = value.shape;
    if (!Array.isArray(s) || s.length > MAX_RANK || !s.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: shape must be an array of at most ${MAX_RANK} whole numbers, got ${describe(s)}`);
    }
    declared = s as number[];
  }
  const nested = nestedShape(data, name);
  let shape: number[];
  if (nested.length > 1 || declared === undefined) {
    if (declared !== undefined && (declared.length !== nested.length || declared.some((d, k) => d !== nested[k]))) {
      throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: shape says ${fmtShape(declared)}, the nested data is ${fmtShape(nested)}`);
    }
    shape = nested;
  } else {
    shape = declared;
    if (product(declared) !== data.length) throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: shape ${fmtShape(declared)} holds ${product(declared)} values, data has ${data.length}`);
  }
  checkShape(spec, shape);
  checkElements(name, shape, maxElements);
  const n = product(shape);
  // Every value takes at least one byte of the body: a bigger count means ragged data, and
  // checking first keeps a lying shape from allocating memory.
  if (n > bodyLength) throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: nested data is ragged (its first elements imply shape ${fmtShape(shape)})`);
  const out = ALLOC[dtype](n);
  const write = writerFor(dtype, out, name);
  if (nested.length > 1 || shape.length === 0) {
    if (shape.length === 0) {
      if (data.length !== 1) throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: a scalar takes one value, data has ${data.length}`);
      write(data[0], 0);
    } else fill(data, shape, write, name);
  } else {
    for (let i = 0; i < data.length; i++) {
      if (Array.isArray(data[i])) throw new EdgeqError('E_SHAPE_MISMATCH', `input ${quote(name)}: nested data is ragged (data[${i}] is an array)`);
      write(data[i], i);
    }
  }
  return { name, dtype, shape, data: out };
}

/** `{"inputs": {"<name>": {"shape": [...], "data": [...], "dtype"?: "..."}}}`. */
export function decodeJsonBody(body: Buffer, specs: InputSpec[], maxElements = DEFAULT_MAX_ELEMENTS): DecodedInput[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw new EdgeqError('E_BAD_JSON', `the body is not valid JSON: ${String((e as Error).message).slice(0, 200)}`);
  }
  if (!isObject(parsed)) throw new EdgeqError('E_INPUT_INVALID', `the body must be a JSON object {"inputs": {...}}, got ${describe(parsed)}`);
  for (const k of Object.keys(parsed)) {
    if (k !== 'inputs') throw new EdgeqError('E_INPUT_INVALID', `unknown field ${quote(k)} in the body (fields: inputs)`);
  }
  const inputs = parsed.inputs;
  if (!isObject(inputs)) throw new EdgeqError('E_INPUT_INVALID', `"inputs" must be an object mapping input names to tensors, got ${inputs === undefined ? 'nothing' : describe(inputs)}`);
  const names = specs.map((s) => s.name);
  const known = new Set(names);
  for (const k of Object.keys(inputs)) {
    if (!known.has(k)) throw new EdgeqError('E_INPUT_UNKNOWN', `the model has no input ${quote(k)} (its inputs: ${names.join(', ')})`);
  }
  const missing = names.filter((n) => !Object.hasOwn(inputs, n));
  if (missing.length) throw new EdgeqError('E_INPUT_MISSING', `the request lacks input${missing.length > 1 ? 's' : ''} ${missing.map(quote).join(', ')}`);
  const decoded = specs.map((s) => decodeJsonInput(s, inputs[s.name], body.length, maxElements));
  checkDimNames(specs, decoded);
  return decoded;
}

/** An .npy body: the one input of a single-input model, dtype exactly the model's. */
export function decodeNpyBody(body: Buffer, specs: InputSpec[], maxElements = DEFAULT_MAX_ELEMENTS): DecodedInput[] {
  if (specs.length !== 1) {
    throw new EdgeqError('E_INPUT_MISSING', `the model takes ${specs.length} inputs (${specs.map((s) => s.name).join(', ')}); an .npy body carries one — send JSON {"inputs": {...}}`);
  }
  const spec = specs[0];
  const dtype = ensureServed(spec);
  const npy = parseNpy(body, 'the request body');
  if (npy.dtype !== dtype) throw new EdgeqError('E_DTYPE_MISMATCH', `input ${quote(spec.name)} is ${dtype}, the .npy body holds ${npy.dtype}`);
  checkShape(spec, npy.shape);
  checkElements(spec.name, npy.shape, maxElements);
  const decoded = [{ name: spec.name, dtype, shape: npy.shape, data: npy.data as InputArray }];
  checkDimNames(specs, decoded);
  return decoded;
}

export function toSample(d: DecodedInput): SampleTensor {
  return { name: d.name, dtype: d.dtype, shape: [...d.shape], data: new Uint8Array(d.data.buffer, d.data.byteOffset, d.data.byteLength) };
}

export interface JsonOutput {
  shape: number[];
  dtype: string;
  data: Array<number | boolean | string>;
}

/** Output tensors as JSON: floats as numbers (NaN and ±Infinity become null in JSON), int64 as numbers, bool as true/false. */
export function outputToJson(t: ort.Tensor): JsonOutput {
  const shape = [...t.dims];
  const d = t.data;
  let data: Array<number | boolean | string>;
  if (d instanceof BigInt64Array || d instanceof BigUint64Array) data = Array.from(d, (v) => Number(v));
  else if (t.type === 'bool') data = Array.from(d as Uint8Array, (v) => v !== 0);
  else if (Array.isArray(d)) data = d.map(String);
  else data = Array.from(d as ArrayLike<number>);
  return { shape, dtype: t.type, data };
}
