/**
 * Tensor inputs for fuzzing: .npy bytes (a valid header with fuzzed descr, fortran_order, shape,
 * version and header length, data of the right size or not, then bytewise mutations) and the
 * endpoint's request bodies (JSON tensors with declared and nested shapes, odd values, ragged or
 * huge data; .npy bodies) for given input specs.
 */
import fc from 'fast-check';
import type { InputSpec, ServedDtype } from '../../agent/serve/tensors.js';
import { byteMutations, interestingInt, interestingNumber, jsonText, mutateBytes, objectOf, rarely, type ByteMutation, type TextMutation } from './gen.js';

// ---------------------------------------------------------------------------------------------
// .npy

export interface NpyRecipe {
  version: number;
  descr: string;
  fortran: string;
  /** The text between the parentheses of 'shape'. */
  shape: string;
  /** Keys in this order; a missing one is left out. */
  keys: Array<'descr' | 'fortran_order' | 'shape'>;
  quote: "'" | '"';
  /** Added to the true header length in the length field. */
  lengthDelta: number;
  /** Bytes of data: the header's count, or this many. */
  dataBytes: 'exact' | number;
  /** Added to the exact data size. */
  dataDelta: number;
  mutations: ByteMutation[];
}

export const NPY_DESCRS = ['<f4', '<f8', '|u1', '<u1', '|i1', '<i1', '<i4', '<i8'];
const ODD_DESCRS = ['>f4', '<f2', '|b1', '<c8', 'O', '<U3', '|S4', '<i2', '<u8', '=f4', '', "<f4', 'x"];
const ITEM: Record<string, number> = { '<f4': 4, '<f8': 8, '|u1': 1, '<u1': 1, '|i1': 1, '<i1': 1, '<i4': 4, '<i8': 8 };
/** The endpoint's dtype for an npy descr. */
export const DESCR_DTYPE: Record<string, ServedDtype> = { '<f4': 'float32', '<f8': 'float64', '|u1': 'uint8', '<u1': 'uint8', '|i1': 'int8', '<i1': 'int8', '<i4': 'int32', '<i8': 'int64' };

const dim = fc.oneof({ arbitrary: fc.integer({ min: 1, max: 6 }), weight: 12 }, { arbitrary: fc.constant(0), weight: 1 }, { arbitrary: interestingInt, weight: 1 });
const shapeText = fc.oneof(
  { arbitrary: fc.array(dim, { maxLength: 5 }).map((d) => (d.length === 1 ? `${d[0]},` : d.join(', '))), weight: 12 },
  { arbitrary: fc.constantFrom('1, 2', '-1,', '1e3,', '0x10,', ',', '', '1,,2', ' 3 , 4 ', '2L,', '1.5,', 'NaN,', '9007199254740993,', '3, 0, 9007199254740991', '99999999999999999999,'), weight: 2 },
);

export const npyRecipe: fc.Arbitrary<NpyRecipe> = fc.record({
  // Each field is mostly what NumPy writes, so about half the recipes make a valid file.
  version: fc.oneof({ arbitrary: fc.constant(1), weight: 16 }, { arbitrary: fc.constantFrom(2, 3), weight: 3 }, { arbitrary: fc.constantFrom(0, 4, 255), weight: 1 }),
  descr: fc.oneof({ arbitrary: fc.constantFrom(...NPY_DESCRS), weight: 20 }, { arbitrary: fc.constantFrom(...ODD_DESCRS), weight: 1 }),
  fortran: fc.oneof({ arbitrary: fc.constant('False'), weight: 20 }, { arbitrary: fc.constantFrom('True', 'false', '0', 'None'), weight: 1 }),
  shape: shapeText,
  keys: fc.oneof({ arbitrary: fc.constant(['descr', 'fortran_order', 'shape'] as Array<'descr' | 'fortran_order' | 'shape'>), weight: 20 }, { arbitrary: fc.shuffledSubarray(['descr', 'fortran_order', 'shape'] as const), weight: 1 }),
  quote: fc.oneof({ arbitrary: fc.constant("'" as const), weight: 30 }, { arbitrary: fc.constant('"' as const), weight: 1 }),
  lengthDelta: fc.oneof({ arbitrary: fc.constant(0), weight: 20 }, { arbitrary: fc.integer({ min: -16, max: 16 }), weight: 1 }, { arbitrary: interestingInt, weight: 1 }),
  dataBytes: fc.oneof({ arbitrary: fc.constant('exact' as const), weight: 20 }, { arbitrary: fc.nat({ max: 256 }), weight: 1 }),
  dataDelta: fc.oneof({ arbitrary: fc.constant(0), weight: 16 }, { arbitrary: fc.integer({ min: -9, max: 9 }), weight: 1 }),
  mutations: fc.oneof({ arbitrary: fc.constant([] as ByteMutation[]), weight: 4 }, { arbitrary: byteMutations(4), weight: 1 }),
});

/** Data bytes of a case are capped: a header may promise more than a case carries. */
const MAX_DATA = 1 << 16;

export function npyBytes(r: NpyRecipe): Uint8Array {
  const q = r.quote;
  const parts = { descr: `${q}descr${q}: ${q}${r.descr}${q}`, fortran_order: `${q}fortran_order${q}: ${r.fortran}`, shape: `${q}shape${q}: (${r.shape})` };
  let header = `{${r.keys.map((k) => parts[k]).join(', ')}, }`;
  const pre = r.version === 1 ? 10 : 12;
  header += ' '.repeat((64 - ((pre + header.length + 1) % 64)) % 64) + '\n';
  const head = Buffer.from(header, r.version === 3 ? 'utf8' : 'latin1');
  const magic = Buffer.alloc(pre);
  magic[0] = 0x93;
  magic.write('NUMPY', 1, 'latin1');
  magic[6] = r.version;
  const len = head.length + r.lengthDelta;
  if (pre === 10) magic.writeUInt16LE(((len % 65536) + 65536) % 65536, 8);
  else magic.writeUInt32LE(((len % 2 ** 32) + 2 ** 32) % 2 ** 32, 8);
  const dims = r.shape.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  const n = dims.reduce((a, b) => a * b, 1);
  const exact = Number.isSafeInteger(n) && n >= 0 ? n * (ITEM[r.descr] ?? 1) : 0;
  const size = Math.max(0, Math.min(MAX_DATA, (r.dataBytes === 'exact' ? exact : r.dataBytes) + r.dataDelta));
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (i * 131 + 7) & 0xff;
  const bytes = new Uint8Array(Buffer.concat([magic, head, data]));
  return r.mutations.length ? mutateBytes(bytes, r.mutations) : bytes;
}

export type NpyCase = { kind: 'npy'; recipe: NpyRecipe; bytes: Uint8Array } | { kind: 'random'; bytes: Uint8Array };

export const npyCase: fc.Arbitrary<NpyCase> = fc.oneof(
  { arbitrary: npyRecipe.map((recipe) => ({ kind: 'npy' as const, recipe, bytes: npyBytes(recipe) })), weight: 10 },
  { arbitrary: fc.uint8Array({ maxLength: 128, size: 'max' }).map((bytes) => ({ kind: 'random' as const, bytes })), weight: 1 },
  {
    arbitrary: fc.uint8Array({ maxLength: 128, size: 'max' }).map((b) => {
      const bytes = new Uint8Array(8 + b.length);
      bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59], 0);
      bytes.set(b, 6);
      return { kind: 'random' as const, bytes };
    }),
    weight: 1,
  },
);

// ---------------------------------------------------------------------------------------------
// request bodies

const SERVED: ServedDtype[] = ['float32', 'float64', 'int8', 'uint8', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'bool'];
const INPUT_NAMES = ['input', 'a', 'b', 'ids', 'x', '__proto__', 'constructor', 'toString', 'hasOwnProperty', ''];

export const inputSpec: fc.Arbitrary<InputSpec> = fc.record({
  name: fc.oneof({ arbitrary: fc.constantFrom(...INPUT_NAMES), weight: 4 }, { arbitrary: fc.string({ maxLength: 6 }), weight: 1 }),
  type: fc.oneof({ arbitrary: fc.constantFrom(...SERVED), weight: 20 }, { arbitrary: fc.constantFrom('float16', 'string', 'non-tensor', 'bfloat16'), weight: 1 }),
  shape: fc.array(fc.oneof({ arbitrary: fc.integer({ min: 1, max: 4 }), weight: 8 }, { arbitrary: fc.constantFrom<number | string>('N', 'M', '', -1), weight: 6 }, { arbitrary: fc.constant(0), weight: 1 }, { arbitrary: fc.string({ maxLength: 3 }), weight: 1 }), { maxLength: 4 }),
});

export const inputSpecs: fc.Arbitrary<InputSpec[]> = fc.uniqueArray(inputSpec, { minLength: 1, maxLength: 3, selector: (s) => s.name });

/** What is wrong with a tensor (one thing at most, so most tensors are valid and a body gets far). */
export type TensorDefect =
  | 'none'
  | 'dims' // dims not from the spec
  | 'zero-dim'
  | 'flat-no-shape' // flat data, no shape: rank 1
  | 'ragged'
  | 'scalar' // one value, shape []
  | 'shape-wrong' // declared shape one dim longer
  | 'shape-huge' // declared leading dim 2^40
  | 'dtype-other'
  | 'dtype-number'
  | 'bad-value' // one value from a wide pool of wrong ones
  | 'deep'; // nested deeper than MAX_RANK

export interface TensorRecipe {
  /** Dims for the data: the spec's fixed dims, dynamic ones 1 to 4. */
  dims: number[];
  /** Nested arrays (no shape needed) or flat data with a shape. */
  nested: boolean;
  /** Declare the shape for nested data too. */
  declare: boolean;
  /** Say "dtype" (the spec's). */
  dtype: boolean;
  /** Valid values for the dtype; the data cycles through them. */
  values: unknown[];
  defect: TensorDefect;
  /** For 'dims': other dims. For 'bad-value': the value and where. */
  altDims: number[];
  badValue: unknown;
  badAt: number;
}

const INT_BOUNDS: Record<string, [number, number]> = {
  int8: [-128, 127], uint8: [0, 255], int16: [-32768, 32767], uint16: [0, 65535], int32: [-(2 ** 31), 2 ** 31 - 1], uint32: [0, 2 ** 32 - 1],
};

/** Values a tensor of `dtype` accepts, edges included. */
function goodValues(dtype: string): fc.Arbitrary<unknown> {
  if (dtype === 'float32' || dtype === 'float64') return fc.oneof(fc.double({ min: -1e6, max: 1e6, noNaN: true }), fc.constantFrom(0, -0, 1, 3.4e38, 3.5e38, 1e308, 5e-324, -1e-45));
  if (dtype === 'bool') return fc.constantFrom(true, false, 0, 1);
  if (dtype === 'int64') return fc.oneof(fc.integer({ min: -100, max: 100 }), fc.constantFrom<unknown>(2 ** 53 - 1, -(2 ** 53 - 1), '9223372036854775807', '-9223372036854775808', '-0', '00000000000000000001'));
  if (dtype === 'uint64') return fc.oneof(fc.integer({ min: 0, max: 100 }), fc.constantFrom<unknown>(2 ** 53 - 1, '18446744073709551615', '0'));
  const [lo, hi] = INT_BOUNDS[dtype] ?? [0, 100];
  return fc.oneof(fc.integer({ min: Math.max(lo, -100), max: Math.min(hi, 100) }), fc.constantFrom(lo, hi));
}

/** Values of every kind: most are wrong for some dtype. */
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  interestingNumber,
  fc.constantFrom<unknown>(null, true, false, '1', '', '1e3', ' 1', '99999999999999999999', '18446744073709551616', '-9223372036854775809', 2 ** 63, 1.5, -1, 256, 65536, [], {}, [1]),
);

const DEFECTS: TensorDefect[] = ['dims', 'zero-dim', 'flat-no-shape', 'ragged', 'scalar', 'shape-wrong', 'shape-huge', 'dtype-other', 'dtype-number', 'bad-value', 'deep'];

/** Data for one input: valid for the spec but for (now and then) one defect. */
function tensorRecipe(spec: InputSpec): fc.Arbitrary<TensorRecipe> {
  const dims = fc.tuple(...spec.shape.map((d) => (typeof d === 'number' && d > 0 ? fc.constant(d) : fc.integer({ min: 1, max: 4 }))));
  return fc.record({
    dims: spec.shape.length ? dims : fc.array(fc.integer({ min: 1, max: 4 }), { maxLength: 4 }),
    nested: fc.boolean(),
    declare: fc.boolean(),
    dtype: fc.oneof({ arbitrary: fc.constant(false), weight: 4 }, { arbitrary: fc.constant(true), weight: 1 }),
    values: fc.array(goodValues(spec.type), { minLength: 1, maxLength: 8 }),
    defect: fc.oneof({ arbitrary: fc.constant('none' as const), weight: DEFECTS.length * 2 }, { arbitrary: fc.constantFrom(...DEFECTS), weight: 1 }),
    altDims: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 4 }),
    badValue: anyValue,
    badAt: fc.nat(),
  });
}

/** The JSON tensor a recipe describes. Values cycle through `values`; at most 4096 of them. */
export function tensorJson(spec: InputSpec, r: TensorRecipe): Record<string, unknown> {
  const dims = r.defect === 'dims' ? r.altDims : r.defect === 'zero-dim' ? [...r.dims.slice(0, -1), 0] : r.dims;
  const count = dims.reduce((a, b) => a * b, 1);
  const n = Math.min(count, 4096);
  const bad = r.defect === 'bad-value' ? r.badAt % Math.max(1, n) : -1;
  const val = (i: number) => (i === bad ? r.badValue : r.values[i % r.values.length]);
  let data: unknown[];
  let shape: number[] | undefined;
  if (r.defect === 'scalar') {
    data = [val(0)];
    shape = [];
  } else if (r.defect === 'deep') {
    let d: unknown = [val(0)];
    for (let k = 0; k < 36; k++) d = [d];
    data = d as unknown[];
  } else if ((r.nested || r.defect === 'ragged') && dims.length > 0 && count <= 4096) {
    let i = 0;
    const nest = (depth: number): unknown[] => {
      const len = dims[depth];
      if (depth === dims.length - 1) return Array.from({ length: len }, () => val(i++));
      return Array.from({ length: len }, () => nest(depth + 1));
    };
    data = nest(0);
    if (r.declare) shape = dims;
    if (r.defect === 'ragged') {
      const last = data[data.length - 1];
      if (Array.isArray(last) && last.length > 0) last.pop();
      else data.push([val(1)]);
    }
  } else {
    data = Array.from({ length: n }, (_, i) => val(i));
    if (r.defect !== 'flat-no-shape') shape = dims;
  }
  if (r.defect === 'shape-wrong') shape = [...dims, 2];
  if (r.defect === 'shape-huge') shape = [2 ** 40, ...dims.slice(1)];
  const out: Array<[string, unknown]> = [];
  if (shape !== undefined) out.push(['shape', shape]);
  out.push(['data', data]);
  if (r.defect === 'dtype-other') out.push(['dtype', spec.type === 'float32' ? 'float64' : 'float32']);
  else if (r.defect === 'dtype-number') out.push(['dtype', 1]);
  else if (r.dtype) out.push(['dtype', spec.type]);
  return objectOf(out);
}

export interface BodyRecipe {
  /** Per spec: its tensor, or left out (null). */
  tensors: Array<TensorRecipe | null>;
  /** An input the model does not have. */
  unknown: string | null;
  /** 0: {inputs}; 1: {inputs, extra}; 2: [inputs]; 3: the inputs object alone. */
  top: number;
  mutations: TextMutation[];
}

export type BodyCase =
  | { kind: 'json'; specs: InputSpec[]; recipe: BodyRecipe; body: Uint8Array }
  | { kind: 'npy'; specs: InputSpec[]; recipe: NpyRecipe; body: Uint8Array }
  | { kind: 'raw'; specs: InputSpec[]; npy: boolean; body: Uint8Array };

/** A JSON request body for `specs`, and the body bytes. */
export function jsonBodyFor(specs: InputSpec[]): fc.Arbitrary<{ recipe: BodyRecipe; body: Uint8Array }> {
  // A tensor left out one time in 30 (fc.option's nil one time in freq).
  const tensors = fc.tuple(...specs.map((s) => fc.option(tensorRecipe(s), { freq: 30, nil: null })));
  return fc
    .record({
      tensors,
      unknown: rarely(fc.constantFrom('extra', '__proto__', 'constructor'), 12).map((u) => u ?? null),
      top: fc.oneof({ arbitrary: fc.constant(0), weight: 20 }, { arbitrary: fc.constantFrom(1, 2, 3), weight: 1 }),
    })
    .chain(({ tensors: ts, unknown, top }) => {
      const inputs = objectOf([...specs.flatMap((s, i) => (ts[i] ? [[s.name, tensorJson(s, ts[i]!)] as const] : [])), ...(unknown ? [[unknown, { data: [1] }] as const] : [])]);
      const value = top === 0 ? { inputs } : top === 1 ? { inputs, extra: 1 } : top === 2 ? [inputs] : inputs;
      return jsonText(fc.constant(value)).map(({ mutations, text }) => ({ recipe: { tensors: ts, unknown, top, mutations }, body: new Uint8Array(Buffer.from(text, 'utf8')) }));
    });
}

/** An .npy body whose descr is mostly the spec's dtype. */
export function npyBodyFor(spec: InputSpec | undefined): fc.Arbitrary<{ recipe: NpyRecipe; body: Uint8Array }> {
  const matching = Object.entries(DESCR_DTYPE).filter(([, d]) => d === spec?.type).map(([k]) => k);
  const shape = spec?.shape.length ? fc.tuple(...spec.shape.map((d) => (typeof d === 'number' && d > 0 ? fc.constant(d) : fc.integer({ min: 0, max: 3 })))).map((d) => (d.length === 1 ? `${d[0]},` : d.join(', '))) : shapeText;
  return fc
    .tuple(npyRecipe, matching.length ? fc.oneof({ arbitrary: fc.constantFrom(...matching), weight: 4 }, { arbitrary: fc.constantFrom(...NPY_DESCRS), weight: 1 }) : fc.constantFrom(...NPY_DESCRS), fc.oneof({ arbitrary: shape, weight: 4 }, { arbitrary: shapeText, weight: 1 }))
    .map(([r, descr, s]) => {
      const recipe = { ...r, descr, shape: s };
      return { recipe, body: npyBytes(recipe) };
    });
}

export function bodyCaseFor(specs: InputSpec[]): fc.Arbitrary<BodyCase> {
  return fc.oneof(
    { arbitrary: jsonBodyFor(specs).map(({ recipe, body }) => ({ kind: 'json' as const, specs, recipe, body })), weight: 6 },
    // .npy bodies are for single-input models: mostly the first spec alone.
    { arbitrary: fc.tuple(npyBodyFor(specs[0]), fc.nat({ max: 5 })).map(([{ recipe, body }, k]) => ({ kind: 'npy' as const, specs: k === 0 ? specs : specs.slice(0, 1), recipe, body })), weight: 3 },
    { arbitrary: fc.record({ npy: fc.boolean(), body: fc.uint8Array({ maxLength: 64, size: 'max' }) }).map(({ npy, body }) => ({ kind: 'raw' as const, specs, npy, body })), weight: 1 },
  );
}

export const bodyCase: fc.Arbitrary<BodyCase> = inputSpecs.chain(bodyCaseFor);
