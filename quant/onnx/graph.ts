/** Small helpers over GraphProto: indices, attributes, node construction, ordering. */
import { create } from '@bufbuild/protobuf';
import { AttributeProtoSchema, AttributeProto_AttributeType as AT, NodeProtoSchema, TensorShapeProtoSchema, TensorShapeProto_DimensionSchema, TypeProtoSchema, TypeProto_TensorSchema, ValueInfoProtoSchema } from 'onnx-buf';
import type { AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto } from 'onnx-buf';
import { EdgeqError } from '../errors.js';

export function initializerMap(graph: GraphProto): Map<string, TensorProto> {
  return new Map(graph.initializer.map((t) => [t.name, t]));
}

export function producerMap(graph: GraphProto): Map<string, NodeProto> {
  const m = new Map<string, NodeProto>();
  for (const n of graph.node) for (const o of n.output) if (o) m.set(o, n);
  return m;
}

export function consumerMap(graph: GraphProto): Map<string, NodeProto[]> {
  const m = new Map<string, NodeProto[]>();
  for (const n of graph.node) {
    for (const i of n.input) {
      if (!i) continue;
      let list = m.get(i);
      if (!list) m.set(i, (list = []));
      if (!list.includes(n)) list.push(n);
    }
  }
  return m;
}

export function graphOutputNames(graph: GraphProto): Set<string> {
  return new Set(graph.output.map((o) => o.name));
}

/** The opset version of the default ONNX domain. */
export function onnxOpset(model: ModelProto): number {
  const e = model.opsetImport.find((o) => o.domain === '' || o.domain === 'ai.onnx');
  if (!e) throw new EdgeqError('E_MODEL_INVALID', 'the model imports no version of the default ONNX opset');
  return Number(e.version);
}

function attr(node: NodeProto, name: string): AttributeProto | undefined {
  return node.attribute.find((a) => a.name === name);
}

export function attrInt(node: NodeProto, name: string, dflt: number): number {
  const a = attr(node, name);
  return a ? Number(a.i) : dflt;
}

export function attrFloat(node: NodeProto, name: string, dflt: number): number {
  const a = attr(node, name);
  return a ? a.f : dflt;
}

export function attrInts(node: NodeProto, name: string): number[] | undefined {
  const a = attr(node, name);
  return a ? a.ints.map((x) => Number(x)) : undefined;
}

export function attrString(node: NodeProto, name: string, dflt: string): string {
  const a = attr(node, name);
  return a ? new TextDecoder().decode(a.s) : dflt;
}

export function attrTensor(node: NodeProto, name: string): TensorProto | undefined {
  return attr(node, name)?.t;
}

export type AttrValue = number | string | number[] | { float: number } | { floats: number[] } | TensorProto;

function makeAttr(name: string, v: AttrValue): AttributeProto {
  if (typeof v === 'number') return create(AttributeProtoSchema, { name, type: AT.INT, i: BigInt(v) });
  if (typeof v === 'string') return create(AttributeProtoSchema, { name, type: AT.STRING, s: new TextEncoder().encode(v) });
  if (Array.isArray(v)) return create(AttributeProtoSchema, { name, type: AT.INTS, ints: v.map((x) => BigInt(x)) });
  if ('float' in v) return create(AttributeProtoSchema, { name, type: AT.FLOAT, f: v.float });
  if ('floats' in v) return create(AttributeProtoSchema, { name, type: AT.FLOATS, floats: v.floats });
  return create(AttributeProtoSchema, { name, type: AT.TENSOR, t: v });
}

export function setAttr(node: NodeProto, name: string, v: AttrValue): void {
  const a = makeAttr(name, v);
  const i = node.attribute.findIndex((x) => x.name === name);
  if (i >= 0) node.attribute[i] = a;
  else node.attribute.push(a);
}

export function makeNode(
  opType: string,
  inputs: string[],
  outputs: string[],
  name: string,
  attrs: Record<string, AttrValue> = {},
  domain = '',
): NodeProto {
  return create(NodeProtoSchema, {
    opType,
    input: inputs,
    output: outputs,
    name,
    domain,
    attribute: Object.entries(attrs).map(([k, v]) => makeAttr(k, v)),
  });
}

/** A tensor value info (graph input or output); string dims are symbolic (dim_param). */
export function makeValueInfo(name: string, elemType: number, dims: ReadonlyArray<bigint | number | string>): ValueInfoProto {
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, {
      value: {
        case: 'tensorType',
        value: create(TypeProto_TensorSchema, {
          elemType,
          shape: create(TensorShapeProtoSchema, {
            dim: dims.map((d) => create(TensorShapeProto_DimensionSchema, { value: typeof d === 'string' ? { case: 'dimParam', value: d } : { case: 'dimValue', value: BigInt(d) } })),
          }),
        }),
      },
    }),
  });
}

/**
 * Sorts nodes so every node comes after the producers of its inputs (ONNX requires it).
 * Stable: nodes already in order keep their relative order.
 */
export function topoSort(graph: GraphProto): void {
  const available = new Set<string>([...graph.input.map((i) => i.name), ...graph.initializer.map((t) => t.name), '']);
  const pending = [...graph.node];
  const sorted: NodeProto[] = [];
  // Outer-scope names used by subgraphs are not tracked here; such nodes are placed as soon as
  // their direct inputs are ready, which is what ONNX needs.
  while (pending.length) {
    let progressed = false;
    for (let i = 0; i < pending.length; ) {
      const n = pending[i];
      if (n.input.every((x) => available.has(x))) {
        sorted.push(n);
        for (const o of n.output) available.add(o);
        pending.splice(i, 1);
        progressed = true;
      } else i++;
    }
    if (!progressed) {
      // Inputs from nowhere (bad model) or a cycle: keep the rest in their order, ORT will report it.
      sorted.push(...pending);
      break;
    }
  }
  graph.node = sorted;
}

/** A name not yet used by any tensor or node of the graph, derived from `base`. */
export class NameAllocator {
  private used = new Set<string>();

  constructor(graph: GraphProto) {
    for (const t of graph.initializer) this.used.add(t.name);
    for (const v of [...graph.input, ...graph.output, ...graph.valueInfo]) this.used.add(v.name);
    for (const n of graph.node) {
      this.used.add(n.name);
      for (const x of [...n.input, ...n.output]) this.used.add(x);
    }
  }

  fresh(base: string): string {
    let name = base;
    for (let i = 1; this.used.has(name); i++) name = `${base}_${i}`;
    this.used.add(name);
    return name;
  }
}
