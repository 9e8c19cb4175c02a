/**
 * ONNX model bytes for fuzzing: random bytes, the committed fixture models mutated bytewise,
 * the fixtures edited structurally (tensor dims and data, external-data references, node op
 * types, inputs and attributes, opsets, nested subgraphs) and re-encoded, and small synthetic
 * Conv/Gemm + BatchNormalization graphs with odd tensors, which reach the quantizer's folding
 * passes. A case is a recipe (printable, shrinkable) plus the bytes it makes.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { create, fromBinary } from '@bufbuild/protobuf';
import {
  AttributeProtoSchema,
  AttributeProto_AttributeType as AT,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  StringStringEntryProtoSchema,
  TensorProtoSchema,
  TensorProto_DataLocation,
  ValueInfoProtoSchema,
} from 'onnx-buf';
import type { AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto } from 'onnx-buf';
import fc from 'fast-check';
import { makeValueInfo as valueInfo } from '../../quant/onnx/graph.js';
import { allTensors, encodeModel } from '../../quant/onnx/model.js';
import { DT } from '../../quant/onnx/tensor.js';
import { byteMutations, interestingBigInt, interestingNumber, mutateBytes, type ByteMutation } from './gen.js';

/** The project root (this file runs as dist/tools/fuzzing/onnx-cases.js). */
export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

/** Committed models the mutations start from, with how often each is picked. */
export const ONNX_FIXTURES: ReadonlyArray<{ path: string; weight: number }> = [
  { path: 'test/fixtures/fmnist-mobilenet/model.onnx', weight: 4 },
  { path: 'test/fixtures/fmnist/model.onnx', weight: 1 },
  { path: 'test/fixtures/onnx-testdata/test_if/model.onnx', weight: 1 },
  { path: 'test/fixtures/onnx-testdata/test_loop11/model.onnx', weight: 1 },
  { path: 'test/fixtures/onnx-testdata/test_conv_with_strides_padding/model.onnx', weight: 1 },
  { path: 'test/fixtures/onnx-testdata/test_layer_normalization_2d_axis0_expanded/model.onnx', weight: 1 },
  { path: 'test/fixtures/onnx-testdata/test_castlike_FLOAT_to_STRING/model.onnx', weight: 1 },
];

const fixtureBytes = new Map<number, Uint8Array>();

export function fixture(i: number): Uint8Array {
  let b = fixtureBytes.get(i);
  if (!b) {
    b = new Uint8Array(readFileSync(`${ROOT}${ONNX_FIXTURES[i].path}`));
    fixtureBytes.set(i, b);
  }
  return b;
}

const fixtureIndex = fc.oneof(...ONNX_FIXTURES.map((f, i) => ({ arbitrary: fc.constant(i), weight: f.weight })));

// ---------------------------------------------------------------------------------------------
// structural edits

/** A tensor or value name: one the graph already uses (by index), or a literal. */
export type NameRef = { ref: number } | { name: string };

export type AttrSpec =
  | { i: bigint }
  | { f: number }
  | { ints: bigint[] }
  | { floats: number[] }
  | { s: string }
  | { t: TensorSpec }
  | { g: number };

export interface TensorSpec {
  dt: number;
  dims: bigint[];
  /** raw_data, the typed repeated field of the type, or no data at all. */
  storage: 'raw' | 'typed' | 'none';
  /** Values stored; by default what the dims need (capped). */
  count?: number;
}

export type ModelEdit =
  /** New dims; `clear` also drops the stored values (else a size check catches the change first). */
  | { op: 'dims'; t: number; dims: bigint[]; clear: boolean }
  | { op: 'data'; t: number; how: 'clear' | 'truncate' | 'grow' | 'typed'; n: number }
  | { op: 'dtype'; t: number; dt: number }
  | { op: 'external'; t: number; location: string; offset?: string; length?: string }
  | { op: 'opType'; n: number; opType: string }
  | { op: 'input'; n: number; slot: number; name: NameRef }
  | { op: 'output'; n: number; slot: number; name: NameRef }
  | { op: 'attr'; n: number; name: string; value: AttrSpec }
  | { op: 'dropNode'; n: number }
  | { op: 'dupNode'; n: number }
  | { op: 'swapNodes'; a: number; b: number }
  | { op: 'dropInitializer'; t: number }
  | { op: 'ir'; v: bigint }
  | { op: 'opset'; v: bigint; domain: string }
  | { op: 'graphIO'; which: 'input' | 'output'; how: 'drop' | 'clear' | 'dup' | 'rename'; i: number; name: NameRef }
  | { op: 'valueType'; which: 'input' | 'output'; i: number; elemType: number; dims: Array<bigint | string> }
  | { op: 'nest'; depth: number };

const OP_TYPES = ['BatchNormalization', 'Conv', 'ConvTranspose', 'Gemm', 'MatMul', 'Constant', 'Identity', 'Relu', 'Clip', 'Add', 'Mul', 'Concat', 'Reshape', 'If', 'Loop', 'QuantizeLinear', 'DequantizeLinear', 'MaxPool', 'Softmax', ''];
const ATTR_NAMES = ['group', 'transB', 'transA', 'epsilon', 'training_mode', 'alpha', 'beta', 'value', 'value_float', 'value_floats', 'value_int', 'value_ints', 'value_string', 'axis', 'to', 'then_branch', 'else_branch', 'body', 'kernel_shape', 'pads', 'strides', 'min', 'max'];
/** External-data locations: files the sandbox holds (a data file, a directory, a FIFO), and escapes. */
export const EXTERNAL_LOCATIONS = ['weights.bin', 'sub', 'sub/', 'pipe', 'sub/inner.bin', './weights.bin', 'sub/../weights.bin', '../weights.bin', '/etc/passwd', '.', '', 'missing.bin', 'model.onnx', 'x\0y', '%2e%2e/x', 'weights.bin/'];
const DATA_TYPES = [...Array.from({ length: 26 }, (_, i) => i), 255, -1];

const small = fc.nat({ max: 1 << 16 });
const dimsArb = fc.array(fc.oneof({ arbitrary: fc.bigInt({ min: 0n, max: 8n }), weight: 4 }, { arbitrary: interestingBigInt, weight: 1 }), { maxLength: 5 });
const nameRef: fc.Arbitrary<NameRef> = fc.oneof(
  { arbitrary: fc.record({ ref: fc.nat() }), weight: 4 },
  { arbitrary: fc.record({ name: fc.oneof(fc.constantFrom('', 'x', 'input', '__proto__'), fc.string({ maxLength: 6 })) }), weight: 1 },
);

export const tensorSpec: fc.Arbitrary<TensorSpec> = fc.record(
  {
    dt: fc.oneof({ arbitrary: fc.constantFrom(DT.FLOAT, DT.FLOAT, DT.DOUBLE, DT.INT64, DT.INT32, DT.INT8, DT.UINT8), weight: 6 }, { arbitrary: fc.constantFrom(...DATA_TYPES), weight: 1 }),
    dims: dimsArb,
    storage: fc.constantFrom('raw' as const, 'raw' as const, 'typed' as const, 'none' as const),
    count: fc.nat({ max: 64 }),
  },
  { requiredKeys: ['dt', 'dims', 'storage'] },
);

const attrSpec: fc.Arbitrary<AttrSpec> = fc.oneof(
  fc.record({ i: interestingBigInt }),
  fc.record({ f: interestingNumber }),
  fc.record({ ints: fc.array(interestingBigInt, { maxLength: 6 }) }),
  fc.record({ floats: fc.array(interestingNumber, { maxLength: 6 }) }),
  fc.record({ s: fc.string({ maxLength: 8 }) }),
  fc.record({ t: tensorSpec }),
  fc.record({ g: fc.nat({ max: 3 }) }),
);

export const modelEdit: fc.Arbitrary<ModelEdit> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant('dims' as const), t: small, dims: dimsArb, clear: fc.boolean() }), weight: 4 },
  { arbitrary: fc.record({ op: fc.constant('data' as const), t: small, how: fc.constantFrom('clear' as const, 'truncate' as const, 'grow' as const, 'typed' as const), n: fc.nat({ max: 64 }) }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('dtype' as const), t: small, dt: fc.constantFrom(...DATA_TYPES) }), weight: 2 },
  {
    arbitrary: fc.record(
      {
        op: fc.constant('external' as const),
        t: small,
        location: fc.oneof(fc.constantFrom(...EXTERNAL_LOCATIONS), fc.string({ maxLength: 8 })),
        offset: fc.oneof(fc.constantFrom('0', '1', '4096', '-1', '1e3', 'x', '9007199254740993', ''), interestingBigInt.map(String)),
        length: fc.oneof(fc.constantFrom('0', '4', '16', '-4', '99999999999', 'NaN', ''), interestingBigInt.map(String)),
      },
      { requiredKeys: ['op', 't', 'location'] },
    ),
    weight: 2,
  },
  { arbitrary: fc.record({ op: fc.constant('opType' as const), n: small, opType: fc.oneof(fc.constantFrom(...OP_TYPES), fc.string({ maxLength: 6 })) }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('input' as const), n: small, slot: fc.nat({ max: 6 }), name: nameRef }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('output' as const), n: small, slot: fc.nat({ max: 3 }), name: nameRef }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('attr' as const), n: small, name: fc.oneof(fc.constantFrom(...ATTR_NAMES), fc.string({ maxLength: 6 })), value: attrSpec }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant('dropNode' as const), n: small }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('dupNode' as const), n: small }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('swapNodes' as const), a: small, b: small }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('dropInitializer' as const), t: small }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('ir' as const), v: interestingBigInt }), weight: 1 },
  { arbitrary: fc.record({ op: fc.constant('opset' as const), v: interestingBigInt, domain: fc.constantFrom('', 'ai.onnx', 'com.microsoft', 'x') }), weight: 1 },
  {
    arbitrary: fc.record({ op: fc.constant('graphIO' as const), which: fc.constantFrom('input' as const, 'output' as const), how: fc.constantFrom('drop' as const, 'clear' as const, 'dup' as const, 'rename' as const), i: small, name: nameRef }),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      op: fc.constant('valueType' as const),
      which: fc.constantFrom('input' as const, 'output' as const),
      i: small,
      elemType: fc.constantFrom(...DATA_TYPES),
      dims: fc.array(fc.oneof(interestingBigInt, fc.constantFrom('N', '', 'batch')), { maxLength: 5 }),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ op: fc.constant('nest' as const), depth: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 90, max: 120 })) }), weight: 1 },
);

const ELEM_SIZE: Partial<Record<number, number>> = {
  [DT.FLOAT]: 4, [DT.DOUBLE]: 8, [DT.INT64]: 8, [DT.UINT64]: 8, [DT.INT32]: 4, [DT.UINT32]: 4, [DT.INT16]: 2, [DT.UINT16]: 2, [DT.FLOAT16]: 2, [DT.BFLOAT16]: 2, [DT.INT8]: 1, [DT.UINT8]: 1, [DT.BOOL]: 1,
};

function product(dims: readonly bigint[]): number {
  return dims.reduce((a, d) => a * Number(d), 1);
}

/** Values stored for a tensor: the dims' count when small, else the spec's count. */
function storedCount(spec: TensorSpec): number {
  const n = product(spec.dims);
  return spec.count ?? (Number.isSafeInteger(n) && n >= 0 && n <= 4096 ? n : 4);
}

/** Deterministic, varied values: mostly small, with a zero, a negative and a NaN now and then. */
function valueAt(i: number): number {
  const k = (i * 7919) % 23;
  return k === 22 ? NaN : k === 21 ? -1 : (k - 10) * 0.125;
}

export function makeTensorFrom(name: string, spec: TensorSpec): TensorProto {
  const t = create(TensorProtoSchema, { name, dataType: spec.dt, dims: [...spec.dims] });
  const n = spec.storage === 'none' ? 0 : spec.count ?? storedCount(spec);
  if (spec.storage === 'raw') {
    const size = ELEM_SIZE[spec.dt] ?? 1;
    const raw = new Uint8Array(n * size);
    if (spec.dt === DT.FLOAT) new Float32Array(raw.buffer).forEach((_, i, a) => (a[i] = valueAt(i)));
    else raw.forEach((_, i, a) => (a[i] = (i * 37) & 0xff));
    t.rawData = raw;
  } else if (spec.storage === 'typed') {
    const vals = Array.from({ length: n }, (_, i) => valueAt(i));
    if (spec.dt === DT.DOUBLE) t.doubleData = vals;
    else if (spec.dt === DT.INT64) t.int64Data = vals.map((v) => BigInt(Number.isFinite(v) ? Math.trunc(v * 8) : 0));
    else if (spec.dt === DT.UINT64 || spec.dt === DT.UINT32) t.uint64Data = vals.map((_, i) => BigInt(i));
    else if (spec.dt === DT.FLOAT) t.floatData = vals;
    else t.int32Data = vals.map((v) => (Number.isFinite(v) ? Math.trunc(v * 8) : 0));
  }
  return t;
}

function makeAttr(name: string, v: AttrSpec): AttributeProto {
  if ('i' in v) return create(AttributeProtoSchema, { name, type: AT.INT, i: v.i });
  // float fields are float32 on the wire (the encoder refuses doubles out of its range).
  if ('f' in v) return create(AttributeProtoSchema, { name, type: AT.FLOAT, f: Math.fround(v.f) });
  if ('ints' in v) return create(AttributeProtoSchema, { name, type: AT.INTS, ints: v.ints });
  if ('floats' in v) return create(AttributeProtoSchema, { name, type: AT.FLOATS, floats: v.floats.map(Math.fround) });
  if ('s' in v) return create(AttributeProtoSchema, { name, type: AT.STRING, s: new TextEncoder().encode(v.s) });
  if ('t' in v) return create(AttributeProtoSchema, { name, type: AT.TENSOR, t: makeTensorFrom(`${name}_t`, v.t) });
  const g = create(GraphProtoSchema, { name: `${name}_g`, node: Array.from({ length: v.g }, (_, i) => create(NodeProtoSchema, { opType: 'Identity', input: [`gi${i}`], output: [`go${i}`] })) });
  return create(AttributeProtoSchema, { name, type: AT.GRAPH, g });
}

export { valueInfo };

/** Names the graph uses (inputs, initializers, node outputs), for NameRef. */
function namesOf(g: GraphProto): string[] {
  return [...g.input.map((v) => v.name), ...g.initializer.map((t) => t.name), ...g.node.flatMap((n) => n.output)];
}

function resolveName(ref: NameRef, names: string[]): string {
  if ('name' in ref) return ref.name;
  return names.length ? names[ref.ref % names.length] : '';
}

function pick<T>(list: readonly T[], i: number): T | undefined {
  return list.length ? list[i % list.length] : undefined;
}

export function applyEdits(model: ModelProto, edits: readonly ModelEdit[]): void {
  for (const e of edits) {
    const g = model.graph;
    if (!g) return;
    const tensors = e.op === 'dims' || e.op === 'data' || e.op === 'dtype' || e.op === 'external' ? [...allTensors(g)] : [];
    const names = e.op === 'input' || e.op === 'output' || e.op === 'graphIO' ? namesOf(g) : [];
    switch (e.op) {
      case 'dims': {
        const t = pick(tensors, e.t);
        if (!t) break;
        t.dims = [...e.dims];
        if (e.clear) {
          t.rawData = new Uint8Array(0);
          t.floatData = [];
          t.int64Data = [];
          t.int32Data = [];
          t.doubleData = [];
        }
        break;
      }
      case 'data': {
        const t = pick(tensors, e.t);
        if (!t) break;
        if (e.how === 'clear') t.rawData = new Uint8Array(0);
        else if (e.how === 'truncate') t.rawData = t.rawData.slice(0, e.n % (t.rawData.length + 1));
        else if (e.how === 'grow') {
          const r = new Uint8Array(t.rawData.length + e.n);
          r.set(t.rawData);
          t.rawData = r;
        } else {
          t.rawData = new Uint8Array(0);
          t.floatData = Array.from({ length: e.n }, (_, i) => valueAt(i));
        }
        break;
      }
      case 'dtype': {
        const t = pick(tensors, e.t);
        if (t) t.dataType = e.dt;
        break;
      }
      case 'external': {
        const t = pick(tensors, e.t);
        if (!t) break;
        t.dataLocation = TensorProto_DataLocation.EXTERNAL;
        t.externalData = [create(StringStringEntryProtoSchema, { key: 'location', value: e.location })];
        if (e.offset !== undefined) t.externalData.push(create(StringStringEntryProtoSchema, { key: 'offset', value: e.offset }));
        if (e.length !== undefined) t.externalData.push(create(StringStringEntryProtoSchema, { key: 'length', value: e.length }));
        t.rawData = new Uint8Array(0);
        break;
      }
      case 'opType': {
        const n = pick(g.node, e.n);
        if (n) n.opType = e.opType;
        break;
      }
      case 'input':
      case 'output': {
        const n = pick(g.node, e.n);
        if (!n) break;
        const list = e.op === 'input' ? n.input : n.output;
        const name = resolveName(e.name, names);
        if (e.slot < list.length) list[e.slot] = name;
        else list.push(name);
        break;
      }
      case 'attr': {
        const n = pick(g.node, e.n);
        if (!n) break;
        const a = makeAttr(e.name, e.value);
        const i = n.attribute.findIndex((x) => x.name === e.name);
        if (i >= 0) n.attribute[i] = a;
        else n.attribute.push(a);
        break;
      }
      case 'dropNode':
        if (g.node.length) g.node.splice(e.n % g.node.length, 1);
        break;
      case 'dupNode': {
        const n = pick(g.node, e.n);
        if (n) g.node.splice(e.n % g.node.length, 0, create(NodeProtoSchema, { ...n, input: [...n.input], output: [...n.output], attribute: [...n.attribute] }));
        break;
      }
      case 'swapNodes': {
        if (g.node.length < 2) break;
        const a = e.a % g.node.length, b = e.b % g.node.length;
        [g.node[a], g.node[b]] = [g.node[b], g.node[a]];
        break;
      }
      case 'dropInitializer':
        if (g.initializer.length) g.initializer.splice(e.t % g.initializer.length, 1);
        break;
      case 'ir':
        model.irVersion = e.v;
        break;
      case 'opset': {
        const o = model.opsetImport.find((x) => x.domain === e.domain);
        if (o) o.version = e.v;
        else model.opsetImport.push(create(OperatorSetIdProtoSchema, { domain: e.domain, version: e.v }));
        break;
      }
      case 'graphIO': {
        const list = e.which === 'input' ? g.input : g.output;
        if (e.how === 'clear') list.length = 0;
        else if (!list.length) break;
        else if (e.how === 'drop') list.splice(e.i % list.length, 1);
        else if (e.how === 'dup') list.push(list[e.i % list.length]);
        else list[e.i % list.length] = create(ValueInfoProtoSchema, { ...list[e.i % list.length], name: resolveName(e.name, names) });
        break;
      }
      case 'valueType': {
        const list = e.which === 'input' ? g.input : g.output;
        if (list.length) {
          const i = e.i % list.length;
          list[i] = valueInfo(list[i].name, e.elemType, e.dims);
        }
        break;
      }
      case 'nest': {
        // The graph's nodes moved into an If's then-branch, `depth` levels down.
        let inner: GraphProto = create(GraphProtoSchema, { name: 'inner', node: g.node, output: g.output });
        for (let d = 1; d < e.depth; d++) {
          inner = create(GraphProtoSchema, {
            name: `nest${d}`,
            node: [create(NodeProtoSchema, { opType: 'If', input: ['cond'], output: g.output.map((o) => o.name), attribute: [create(AttributeProtoSchema, { name: 'then_branch', type: AT.GRAPH, g: inner })] })],
            output: g.output,
          });
        }
        g.node = [create(NodeProtoSchema, { opType: 'If', input: ['cond'], output: g.output.map((o) => o.name), attribute: [create(AttributeProtoSchema, { name: 'then_branch', type: AT.GRAPH, g: inner })] })];
        break;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// synthetic Conv/Gemm + BatchNormalization graphs

export interface SyntheticSpec {
  op: 'Conv' | 'ConvTranspose' | 'Gemm' | 'MatMul';
  w: TensorSpec;
  bias: 'none' | 'runtime' | TensorSpec;
  /** gamma, beta, mean, var; null: computed at run time (a graph input). */
  bn: Array<TensorSpec | null>;
  group?: bigint;
  transB?: bigint;
  alpha?: number;
  beta?: number;
  epsilon?: number;
  trainingMode?: bigint;
  bnOutputs: number;
  /** The op's output also feeds a Relu (then BN must not be folded). */
  shared: boolean;
  opset: bigint;
}

const paramSpec = (c: fc.Arbitrary<bigint>): fc.Arbitrary<TensorSpec> =>
  fc.oneof(
    { arbitrary: c.map((n) => ({ dt: DT.FLOAT, dims: [n], storage: 'raw' as const })), weight: 4 },
    { arbitrary: tensorSpec, weight: 1 },
  );

export const syntheticSpec: fc.Arbitrary<SyntheticSpec> = fc.integer({ min: 1, max: 4 }).chain((c) => {
  const cout = fc.oneof({ arbitrary: fc.constant(BigInt(c)), weight: 6 }, { arbitrary: fc.bigInt({ min: 0n, max: 5n }), weight: 1 });
  return fc.record(
    {
      op: fc.constantFrom('Conv' as const, 'Conv' as const, 'ConvTranspose' as const, 'Gemm' as const, 'MatMul' as const),
      w: fc.oneof(
        { arbitrary: fc.array(fc.bigInt({ min: 1n, max: 3n }), { minLength: 1, maxLength: 3 }).map((rest) => ({ dt: DT.FLOAT, dims: [BigInt(c), ...rest], storage: 'raw' as const })), weight: 4 },
        { arbitrary: fc.array(fc.bigInt({ min: 1n, max: 3n }), { minLength: 1, maxLength: 3 }).map((rest) => ({ dt: DT.FLOAT, dims: [rest[0], BigInt(c), ...rest.slice(1)], storage: 'raw' as const })), weight: 2 },
        { arbitrary: tensorSpec, weight: 1 },
      ),
      bias: fc.oneof(fc.constant('none' as const), fc.constant('runtime' as const), paramSpec(fc.oneof(cout, fc.constant(1n)))),
      // each BN parameter computed at run time (null) one time in 12
      bn: fc.tuple(...[0, 1, 2, 3].map(() => fc.option(paramSpec(cout), { freq: 12, nil: null }))),
      group: fc.oneof(fc.constant(1n), interestingBigInt),
      transB: fc.constantFrom(0n, 1n, 2n),
      alpha: interestingNumber,
      beta: interestingNumber,
      epsilon: fc.oneof(fc.constant(1e-5), interestingNumber),
      trainingMode: fc.constantFrom(0n, 1n),
      bnOutputs: fc.integer({ min: 1, max: 3 }),
      shared: fc.boolean(),
      opset: fc.oneof(fc.constant(13n), interestingBigInt),
    },
    { requiredKeys: ['op', 'w', 'bias', 'bn', 'bnOutputs', 'shared', 'opset'] },
  );
});

export function buildSynthetic(s: SyntheticSpec): ModelProto {
  const inits: TensorProto[] = [makeTensorFrom('W', s.w)];
  const inputs = [valueInfo('x', DT.FLOAT, ['N', 1, 4, 4])];
  const opInputs = ['x', 'W'];
  if (s.bias === 'runtime') {
    opInputs.push('bias_in');
    inputs.push(valueInfo('bias_in', DT.FLOAT, [4]));
  } else if (s.bias !== 'none') {
    opInputs.push('B');
    inits.push(makeTensorFrom('B', s.bias));
  }
  const bnInputs = ['y'];
  s.bn.forEach((p, i) => {
    const name = ['gamma', 'beta', 'mean', 'var'][i];
    if (p) inits.push(makeTensorFrom(name, p));
    else inputs.push(valueInfo(name, DT.FLOAT, [4]));
    bnInputs.push(name);
  });
  const opAttrs: AttributeProto[] = [];
  if (s.group !== undefined) opAttrs.push(makeAttr('group', { i: s.group }));
  if (s.transB !== undefined) opAttrs.push(makeAttr('transB', { i: s.transB }));
  if (s.alpha !== undefined) opAttrs.push(makeAttr('alpha', { f: s.alpha }));
  if (s.beta !== undefined) opAttrs.push(makeAttr('beta', { f: s.beta }));
  const bnAttrs: AttributeProto[] = [];
  if (s.epsilon !== undefined) bnAttrs.push(makeAttr('epsilon', { f: s.epsilon }));
  if (s.trainingMode !== undefined) bnAttrs.push(makeAttr('training_mode', { i: s.trainingMode }));
  const bnOutputs = ['z', 'running_mean', 'running_var'].slice(0, s.bnOutputs);
  const nodes: NodeProto[] = [
    create(NodeProtoSchema, { opType: s.op, name: 'op', input: opInputs, output: ['y'], attribute: opAttrs }),
    create(NodeProtoSchema, { opType: 'BatchNormalization', name: 'bn', input: bnInputs, output: bnOutputs, attribute: bnAttrs }),
  ];
  const outputs = [valueInfo('z', DT.FLOAT, [])];
  if (s.shared) {
    nodes.push(create(NodeProtoSchema, { opType: 'Relu', name: 'relu', input: ['y'], output: ['r'] }));
    outputs.push(valueInfo('r', DT.FLOAT, []));
  }
  return create(ModelProtoSchema, {
    irVersion: 8n,
    producerName: 'edgeq-fuzz',
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: s.opset })],
    graph: create(GraphProtoSchema, { name: 'synthetic', node: nodes, input: inputs, output: outputs, initializer: inits }),
  });
}

// ---------------------------------------------------------------------------------------------
// the cases

export type OnnxRecipe =
  | { kind: 'random'; bytes: Uint8Array }
  | { kind: 'bytes'; fixture: number; mutations: ByteMutation[] }
  | { kind: 'edit'; fixture: number; edits: ModelEdit[]; mutations: ByteMutation[] }
  | { kind: 'synthetic'; spec: SyntheticSpec; edits: ModelEdit[]; mutations: ByteMutation[] };

export interface OnnxCase {
  recipe: OnnxRecipe;
  bytes: Uint8Array;
}

function fixtureName(i: number): string {
  return ONNX_FIXTURES[i]?.path ?? `fixture ${i}`;
}

/** The model bytes a recipe makes. */
export function onnxBytes(r: OnnxRecipe): Uint8Array {
  switch (r.kind) {
    case 'random':
      return r.bytes;
    case 'bytes':
      return mutateBytes(fixture(r.fixture), r.mutations);
    case 'edit': {
      const m = fromBinary(ModelProtoSchema, fixture(r.fixture));
      applyEdits(m, r.edits);
      return r.mutations.length ? mutateBytes(encodeModel(m), r.mutations) : encodeModel(m);
    }
    case 'synthetic': {
      const m = buildSynthetic(r.spec);
      applyEdits(m, r.edits);
      return r.mutations.length ? mutateBytes(encodeModel(m), r.mutations) : encodeModel(m);
    }
  }
}

const fewMutations = fc.oneof({ arbitrary: fc.constant([] as ByteMutation[]), weight: 4 }, { arbitrary: byteMutations(3), weight: 1 });

export const onnxRecipe: fc.Arbitrary<OnnxRecipe> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('random' as const), bytes: fc.uint8Array({ maxLength: 512, size: 'max' }) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('bytes' as const), fixture: fixtureIndex, mutations: byteMutations(8) }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('edit' as const), fixture: fixtureIndex, edits: fc.array(modelEdit, { minLength: 1, maxLength: 6 }), mutations: fewMutations }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant('synthetic' as const), spec: syntheticSpec, edits: fc.array(modelEdit, { maxLength: 3 }), mutations: fewMutations }), weight: 4 },
);

export const onnxCase: fc.Arbitrary<OnnxCase> = onnxRecipe.map((recipe) => ({ recipe, bytes: onnxBytes(recipe) }));

/**
 * For ONNX Runtime: more models that get past its loader's first checks (a fixture with one or
 * two edits and no byte mutations), so its graph resolution and kernels see odd models too.
 */
export const onnxLightCase: fc.Arbitrary<OnnxCase> = fc
  .oneof(
    { arbitrary: onnxRecipe, weight: 1 },
    { arbitrary: fc.record({ kind: fc.constant('edit' as const), fixture: fixtureIndex, edits: fc.array(modelEdit, { minLength: 1, maxLength: 2 }), mutations: fc.constant([] as ByteMutation[]) }), weight: 2 },
  )
  .map((recipe) => ({ recipe, bytes: onnxBytes(recipe) }));

/** A recipe for a person: the fixture by path, and the recipe's fields. */
export function describeRecipe(r: OnnxRecipe): Record<string, unknown> {
  return 'fixture' in r ? { ...r, fixture: fixtureName(r.fixture) } : { ...r };
}
