/**
 * Generators shared by the fuzz targets: interesting numbers, byte and text mutations of a
 * valid input, and values shaped by a zod schema (mostly valid, sometimes wrong in one place),
 * so a case gets past a parser's first check.
 */
import fc from 'fast-check';
import type { z } from 'zod';

// fast-check caps generated lengths at about 10 unless told otherwise (its default size is
// 'small'); byte strings that stand for outside input say size: 'max' to reach their maxLength.

/** Integers at the edges parsers get wrong: sizes, sign, 2^31, 2^32, 2^53. */
export const INTERESTING_INTS = [
  0, 1, -1, 2, 3, 7, 8, 127, 128, 255, 256, 1023, 1024, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, -(2 ** 53), 1e9, 1e15,
];

export const interestingInt: fc.Arbitrary<number> = fc.oneof(
  { arbitrary: fc.constantFrom(...INTERESTING_INTS), weight: 3 },
  { arbitrary: fc.integer({ min: -4, max: 64 }), weight: 3 },
  { arbitrary: fc.integer(), weight: 1 },
  { arbitrary: fc.maxSafeInteger(), weight: 1 },
);

/** Numbers of every kind, including ones JSON cannot carry (they become null when stringified). */
export const interestingNumber: fc.Arbitrary<number> = fc.oneof(
  { arbitrary: interestingInt, weight: 4 },
  { arbitrary: fc.double(), weight: 2 },
  { arbitrary: fc.constantFrom(0.5, -0, 1e-300, 5e-324, 1e308, -1e308, 3.4e38, 3.5e38, 1e21, Number.EPSILON, NaN, Infinity, -Infinity), weight: 1 },
);

/** 64-bit integers at the edges, for int64 protobuf fields. */
export const interestingBigInt: fc.Arbitrary<bigint> = fc.oneof(
  fc.constantFrom(0n, 1n, -1n, 2n, 3n, 2n ** 31n, 2n ** 32n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n), 1000000000n, 100000000n),
  fc.bigInt({ min: -4n, max: 64n }),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
);

// ---------------------------------------------------------------------------------------------
// byte mutations

export type ByteMutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; byte: number }
  | { op: 'insert'; at: number; bytes: Uint8Array }
  | { op: 'delete'; at: number; n: number }
  | { op: 'truncate'; at: number }
  /** An interesting integer written little-endian over the bytes at `at`. */
  | { op: 'int'; at: number; value: number; width: 1 | 2 | 4 | 8 }
  /** A protobuf varint written over the bytes at `at` (lengths and tags). */
  | { op: 'varint'; at: number; value: bigint }
  /** A copy of `n` bytes from `from` inserted at `at` (repeats a field, nests a message). */
  | { op: 'copy'; from: number; at: number; n: number };

/** Positions are taken modulo the length when applied, so any mutation fits any input. */
export const byteMutation: fc.Arbitrary<ByteMutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat({ max: 7 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), byte: fc.oneof(fc.constantFrom(0, 0xff, 0x7f, 0x80, 0x93), fc.nat({ max: 255 })) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16, size: 'max' }) }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 64 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('int' as const), at: fc.nat(), value: interestingInt, width: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const) }),
  fc.record({ op: fc.constant('varint' as const), at: fc.nat(), value: fc.oneof(interestingBigInt.map((v) => (v < 0n ? -v : v)), fc.bigInt({ min: 0n, max: 300n })) }),
  fc.record({ op: fc.constant('copy' as const), from: fc.nat(), at: fc.nat(), n: fc.integer({ min: 1, max: 512 }) }),
);

export const byteMutations = (maxLength = 8): fc.Arbitrary<ByteMutation[]> => fc.array(byteMutation, { minLength: 1, maxLength });

function varint(value: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, value);
  do {
    const b = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v ? b | 0x80 : b);
  } while (v);
  return out;
}

/** `base` with the mutations applied in order (a new array; `base` is not touched). */
export function mutateBytes(base: Uint8Array, mutations: readonly ByteMutation[]): Uint8Array {
  let b = Uint8Array.from(base);
  const pos = (at: number, len = b.length) => (len === 0 ? 0 : at % (len + 1));
  const splice = (at: number, del: number, ins: ArrayLike<number>) => {
    const out = new Uint8Array(b.length - del + ins.length);
    out.set(b.subarray(0, at), 0);
    out.set(ins, at);
    out.set(b.subarray(at + del), at + ins.length);
    b = out;
  };
  for (const m of mutations) {
    switch (m.op) {
      case 'flip':
        if (b.length) b[m.at % b.length] ^= 1 << m.bit;
        break;
      case 'set':
        if (b.length) b[m.at % b.length] = m.byte;
        break;
      case 'insert':
        splice(pos(m.at), 0, m.bytes);
        break;
      case 'delete': {
        const at = pos(m.at);
        splice(at, Math.min(m.n, b.length - at), []);
        break;
      }
      case 'truncate':
        b = b.slice(0, pos(m.at));
        break;
      case 'int': {
        const bytes = new Uint8Array(8);
        new DataView(bytes.buffer).setBigInt64(0, BigInt(Math.trunc(m.value)), true);
        const at = pos(m.at);
        splice(at, Math.min(m.width, b.length - at), bytes.subarray(0, m.width));
        break;
      }
      case 'varint': {
        const v = varint(m.value);
        const at = pos(m.at);
        // Replace the varint already there (its continuation bytes) by the new one.
        let old = 0;
        while (at + old < b.length && b[at + old] & 0x80 && old < 9) old++;
        if (at + old < b.length) old++;
        splice(at, old, v);
        break;
      }
      case 'copy': {
        if (b.length === 0) break;
        const from = m.from % b.length;
        const piece = b.slice(from, Math.min(b.length, from + m.n));
        splice(pos(m.at), 0, piece);
        break;
      }
    }
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// text mutations (JSON payloads)

export type TextMutation =
  | { op: 'insert'; at: number; text: string }
  | { op: 'replace'; at: number; text: string }
  | { op: 'delete'; at: number; n: number }
  | { op: 'truncate'; at: number }
  | { op: 'repeat'; at: number; n: number; times: number };

const JSON_TOKENS = ['{', '}', '[', ']', '"', ',', ':', '\\', '\\u0000', '\\ud800', 'null', 'true', '-', '0', '1e999', '-0', '1.5', '"__proto__"', '"constructor"', '\u2028', 'é', '\ud800', ' ', '\n', '{}', '[]', '""', '9007199254740993'];

const jsonToken = fc.oneof({ arbitrary: fc.constantFrom(...JSON_TOKENS), weight: 3 }, { arbitrary: fc.string({ maxLength: 4 }), weight: 1 });

export const textMutation: fc.Arbitrary<TextMutation> = fc.oneof(
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: jsonToken }),
  fc.record({ op: fc.constant('replace' as const), at: fc.nat(), text: jsonToken }),
  fc.record({ op: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('repeat' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 16 }), times: fc.integer({ min: 2, max: 64 }) }),
);

export function mutateText(base: string, mutations: readonly TextMutation[]): string {
  let s = base;
  for (const m of mutations) {
    const at = s.length === 0 ? 0 : m.at % (s.length + 1);
    switch (m.op) {
      case 'insert': s = s.slice(0, at) + m.text + s.slice(at); break;
      case 'replace': s = s.slice(0, at) + m.text + s.slice(at + m.text.length); break;
      case 'delete': s = s.slice(0, at) + s.slice(at + m.n); break;
      case 'truncate': s = s.slice(0, at); break;
      case 'repeat': s = s.slice(0, at) + s.slice(at, at + m.n).repeat(m.times) + s.slice(at + m.n); break;
    }
  }
  return s;
}

/** JSON text of `value`, sometimes mutated so it no longer parses or means something else. */
export function jsonText(value: fc.Arbitrary<unknown>): fc.Arbitrary<{ value: unknown; mutations: TextMutation[]; text: string }> {
  return fc
    .tuple(value, fc.oneof({ arbitrary: fc.constant([] as TextMutation[]), weight: 5 }, { arbitrary: fc.array(textMutation, { minLength: 1, maxLength: 3 }), weight: 1 }))
    .map(([v, mutations]) => ({ value: v, mutations, text: mutateText(JSON.stringify(v) ?? 'undefined', mutations) }));
}

/** `arb`'s value one time in `oneIn`, else undefined (fc.option's freq counts the other way). */
export function rarely<T>(arb: fc.Arbitrary<T>, oneIn: number): fc.Arbitrary<T | undefined> {
  return fc.oneof({ arbitrary: fc.constant(undefined), weight: oneIn - 1 }, { arbitrary: arb, weight: 1 });
}

/** Arbitrary JSON, small. */
export const anyJson: fc.Arbitrary<unknown> = fc.jsonValue({ maxDepth: 3 });

/** An object made with CreateDataProperty, so a "__proto__" key is an own key (as JSON.parse makes it). */
export function objectOf(entries: ReadonlyArray<readonly [string, unknown]>): Record<string, unknown> {
  return Object.fromEntries(entries);
}

const ODD_KEYS = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', '', 'extra', 'id', 'type', 'args'];
const oddKey = fc.oneof(fc.constantFrom(...ODD_KEYS), fc.string({ maxLength: 8 }));

// ---------------------------------------------------------------------------------------------
// one defect in a valid value

/** What withDefect does to one place of a value, chosen by `at` among all its places. */
export type Defect = { at: number; action: 'delete' | 'replace' | 'add'; key: string; value: unknown };

const EDGE_VALUES: unknown[] = [null, '', 'x'.repeat(300), -1, 0, 1.5, 2 ** 53, -(2 ** 31), 1e308, true, [], {}, [null], '1', '__proto__'];

const defectArb: fc.Arbitrary<Defect> = fc.record({
  at: fc.nat(),
  action: fc.constantFrom('delete' as const, 'replace' as const, 'replace' as const, 'add' as const),
  key: oddKey,
  value: fc.oneof(fc.constantFrom(...EDGE_VALUES), anyJson, interestingNumber),
});

/** Every object and array in `v` (depth first), with the keys it holds. */
function places(v: unknown, out: Array<Record<string, unknown> | unknown[]> = []): Array<Record<string, unknown> | unknown[]> {
  if (Array.isArray(v)) {
    out.push(v);
    v.forEach((x) => places(x, out));
  } else if (typeof v === 'object' && v !== null) {
    out.push(v as Record<string, unknown>);
    Object.values(v).forEach((x) => places(x, out));
  }
  return out;
}

/** `value` (a fresh JSON-like tree) with the defect applied in place; returns it. */
export function applyDefect(value: unknown, d: Defect): unknown {
  const all = places(value);
  if (all.length === 0) return d.action === 'delete' ? undefined : d.value;
  const node = all[d.at % all.length];
  if (Array.isArray(node)) {
    const i = node.length ? d.at % node.length : 0;
    if (d.action === 'delete') node.splice(i, 1);
    else if (d.action === 'replace' && node.length) node[i] = d.value;
    else node.push(d.value);
    return value;
  }
  const keys = Object.keys(node);
  const k = keys.length ? keys[d.at % keys.length] : d.key;
  if (d.action === 'delete') delete node[k];
  else if (d.action === 'replace' && keys.length) node[k] = d.value;
  else Object.defineProperty(node, d.key, { value: d.value, enumerable: true, writable: true, configurable: true });
  return value;
}

/** Valid values (from `valid`), one time in `oneIn` with one defect somewhere inside. */
export function withDefect(valid: fc.Arbitrary<unknown>, oneIn = 3): fc.Arbitrary<unknown> {
  return fc.tuple(valid, rarely(defectArb, oneIn)).map(([v, d]) => (d ? applyDefect(structuredClone(v), d) : v));
}

// ---------------------------------------------------------------------------------------------
// values shaped by a zod schema

interface ZodCheckDef {
  check?: string;
  value?: unknown;
  inclusive?: boolean;
  format?: string;
  pattern?: RegExp;
  minimum?: number;
  maximum?: number;
}

interface ZodDef {
  type: string;
  shape?: Record<string, ZodLike>;
  innerType?: ZodLike;
  options?: ZodLike[];
  entries?: Record<string, string | number>;
  values?: unknown[];
  keyType?: ZodLike;
  valueType?: ZodLike;
  element?: ZodLike;
  checks?: Array<{ _zod: { def: ZodCheckDef } }>;
  format?: string;
  pattern?: RegExp;
}

interface ZodLike {
  _zod: { def: ZodDef };
}

export interface SchemaOptions {
  /** Arbitraries to use instead of the schema's, by the object key they sit under. */
  overrides?: Record<string, fc.Arbitrary<unknown>>;
  /** One value in this many gets one defect (withDefect); 0 for none. Default 3. */
  defectOneIn?: number;
}

function checksOf(def: ZodDef): ZodCheckDef[] {
  return (def.checks ?? []).map((c) => c._zod.def);
}

function validString(def: ZodDef): fc.Arbitrary<string> {
  const checks = checksOf(def);
  const pattern = def.pattern ?? checks.find((c) => c.pattern)?.pattern;
  const min = checks.find((c) => c.check === 'min_length')?.minimum ?? 0;
  const max = checks.find((c) => c.check === 'max_length')?.maximum;
  if (def.format === 'datetime') return fc.date({ min: new Date('1970-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true }).map((d) => d.toISOString());
  if (pattern) return fc.stringMatching(pattern).filter((s) => s.length >= min && (max === undefined || s.length <= max));
  const edges = [min, max].filter((n): n is number => n !== undefined && n <= 4096).map((n) => 'a'.repeat(n));
  return fc.oneof({ arbitrary: fc.string({ minLength: min, maxLength: Math.max(min, Math.min(max ?? 24, 24)) }), weight: 6 }, { arbitrary: edges.length ? fc.constantFrom(...edges) : fc.constant('a'.repeat(min)), weight: 1 });
}

function validNumber(def: ZodDef): fc.Arbitrary<number> {
  const checks = checksOf(def);
  const lo = checks.find((c) => c.check === 'greater_than');
  const hi = checks.find((c) => c.check === 'less_than');
  const int = checks.some((c) => c.check === 'number_format' && (c.format === 'safeint' || c.format === 'int32'));
  const loV = lo?.value as number | undefined;
  const hiV = hi?.value as number | undefined;
  if (int) {
    const min = loV === undefined ? -1000 : lo!.inclusive ? Math.ceil(loV) : Math.floor(loV) + 1;
    const max = hiV === undefined ? Math.max(min, 1000) : hi!.inclusive ? Math.floor(hiV) : Math.ceil(hiV) - 1;
    return fc.oneof({ arbitrary: fc.integer({ min, max }), weight: 6 }, { arbitrary: fc.constantFrom(min, max), weight: 1 });
  }
  return fc.double({ min: loV ?? -1000, max: hiV ?? 1000, minExcluded: lo !== undefined && !lo.inclusive, maxExcluded: hi !== undefined && !hi.inclusive, noNaN: true });
}

/** Valid values for `schema` (as far as its checks tell), one time in three with one defect inside. */
export function fromSchema(schema: z.ZodType, opts: SchemaOptions = {}): fc.Arbitrary<unknown> {
  const valid = build(schema as unknown as ZodLike, opts);
  const oneIn = opts.defectOneIn ?? 3;
  return oneIn ? withDefect(valid, oneIn) : valid;
}

function build(s: ZodLike, opts: SchemaOptions): fc.Arbitrary<unknown> {
  const def = s._zod.def;
  switch (def.type) {
    case 'object': {
      const fields = Object.entries(def.shape ?? {}).map(([k, v]) => {
        const optional = v._zod.def.type === 'optional';
        const value = opts.overrides?.[k] ?? build(optional ? v._zod.def.innerType! : v, opts);
        return optional ? fc.option(value.map((x) => [k, x] as const), { nil: undefined, freq: 2 }) : value.map((x) => [k, x] as const);
      });
      return fc.tuple(...fields).map((fs) => objectOf(fs.filter((f): f is readonly [string, unknown] => f !== undefined)));
    }
    case 'string':
      return validString(def);
    case 'number':
      return validNumber(def);
    case 'boolean':
      return fc.boolean();
    case 'enum':
      return fc.constantFrom(...Object.values(def.entries ?? { x: 'x' }));
    case 'literal':
      return fc.constantFrom(...(def.values ?? [null]));
    case 'optional':
      return fc.option(build(def.innerType!, opts), { nil: undefined });
    case 'nullable':
      return fc.option(build(def.innerType!, opts), { nil: null, freq: 4 });
    case 'union':
      return fc.oneof(...(def.options ?? []).map((o) => build(o, opts)));
    case 'record':
      return fc.array(fc.tuple(build(def.keyType!, opts) as fc.Arbitrary<string>, build(def.valueType!, opts)), { maxLength: 4 }).map(objectOf);
    case 'array':
      return fc.array(build(def.element!, opts), { maxLength: 4 });
    default:
      return anyJson;
  }
}
