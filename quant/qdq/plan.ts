/**
 * Decides, before calibration, which nodes to quantize, which activations to absorb into the
 * range of the op before them, and which tensors need observing.
 */
import type { GraphProto, NodeProto, TensorProto } from 'onnx-buf';
import { attrFloat, consumerMap, graphOutputNames, initializerMap, producerMap } from '../onnx/graph.js';
import { DT, tensorDims, tensorFloats } from '../onnx/tensor.js';
import { ruleFor, type OpRule } from './registry.js';

export interface Absorption {
  /** The quantized op whose output range takes the activation's clamp. */
  producer: NodeProto;
  /** The Relu or Clip that goes away. */
  activation: NodeProto;
  lo: number;
  hi: number;
}

export interface Skipped {
  node: string;
  opType: string;
  reason: string;
}

export interface Plan {
  nodes: Map<NodeProto, OpRule>;
  absorptions: Absorption[];
  /** Float activation tensors whose range must be observed. */
  observe: string[];
  skipped: Skipped[];
}

export function nodeLabel(n: NodeProto): string {
  return n.name || `${n.opType}(${n.output[0] ?? ''})`;
}

/** Clip bounds from attributes (opset < 11) or constant inputs (opset >= 11); undefined if not constant. */
function clipBounds(node: NodeProto, inits: Map<string, TensorProto>): { lo: number; hi: number } | undefined {
  if (node.opType === 'Relu') return { lo: 0, hi: Infinity };
  if (node.input.length <= 1) {
    return { lo: attrFloat(node, 'min', -Infinity), hi: attrFloat(node, 'max', Infinity) };
  }
  const bound = (name: string | undefined, dflt: number): number | undefined => {
    if (!name) return dflt;
    const t = inits.get(name);
    if (!t) return undefined;
    const v = tensorFloats(t);
    return v.length === 1 ? v[0] : undefined;
  };
  const lo = bound(node.input[1], -Infinity), hi = bound(node.input[2], Infinity);
  return lo === undefined || hi === undefined ? undefined : { lo, hi };
}

export interface PlanOptions {
  opset: number;
  exclude: Set<string>;
}

/** Tensors whose element type decides whether a node can be quantized: its activation inputs and outputs. */
export function candidateTensors(graph: GraphProto): Set<string> {
  const inits = initializerMap(graph);
  const out = new Set<string>();
  for (const n of graph.node) {
    const rule = ruleFor(n.opType, n.domain);
    if (!rule) continue;
    for (const i of rule.activations(n)) if (n.input[i] && !inits.has(n.input[i])) out.add(n.input[i]);
    for (const o of n.output) if (o) out.add(o);
  }
  // Absorbable activation outputs are observed in place of the op output they replace.
  for (const n of graph.node) if (n.opType === 'Relu' || n.opType === 'Clip') out.add(n.output[0]);
  return out;
}

/**
 * @param floatTensors names of tensors known (from ORT's type inference) to be float32.
 */
export function makePlan(graph: GraphProto, floatTensors: Set<string>, opts: PlanOptions): Plan {
  const inits = initializerMap(graph);
  const consumers = consumerMap(graph);
  const outputs = graphOutputNames(graph);
  const producers = producerMap(graph);
  const nodes = new Map<NodeProto, OpRule>();
  const skipped: Skipped[] = [];
  const isFloat = (name: string) => {
    const t = inits.get(name);
    return t ? t.dataType === DT.FLOAT : floatTensors.has(name);
  };

  for (const n of graph.node) {
    const rule = ruleFor(n.opType, n.domain);
    if (!rule) continue;
    const label = nodeLabel(n);
    if (opts.exclude.has(n.name)) {
      skipped.push({ node: label, opType: n.opType, reason: 'excluded' });
      continue;
    }
    const why = rule.unsupported?.(n, opts.opset);
    if (why) {
      skipped.push({ node: label, opType: n.opType, reason: why });
      continue;
    }
    const acts = rule.activations(n).filter((i) => n.input[i]);
    const w = rule.weight && inits.has(n.input[1] ?? '') ? rule.weight(n, tensorDims(inits.get(n.input[1])!)) : undefined;
    const activationInputs = acts.filter((i) => i !== w?.input);
    if (activationInputs.length === 0) {
      skipped.push({ node: label, opType: n.opType, reason: 'no activation input' });
      continue;
    }
    const nonFloat = [...activationInputs.map((i) => n.input[i]), ...n.output.filter((o) => o)].find((t) => !isFloat(t));
    if (nonFloat) {
      skipped.push({ node: label, opType: n.opType, reason: `tensor ${nonFloat} is not float32` });
      continue;
    }
    if ((n.opType === 'Conv' || n.opType === 'ConvTranspose' || n.opType === 'Gemm') && !w) {
      skipped.push({ node: label, opType: n.opType, reason: 'weight is not a constant initializer' });
      continue;
    }
    if (w && rule.bias !== undefined && n.input[rule.bias]) {
      const b = inits.get(n.input[rule.bias]);
      if (!b || b.dataType !== DT.FLOAT || tensorDims(b).length > 1) {
        skipped.push({ node: label, opType: n.opType, reason: 'bias is not a constant 1-D float initializer' });
        continue;
      }
    }
    nodes.set(n, rule);
  }

  const absorptions: Absorption[] = [];
  for (const act of graph.node) {
    if ((act.opType !== 'Relu' && act.opType !== 'Clip') || act.domain !== '' || opts.exclude.has(act.name)) continue;
    const producer = producers.get(act.input[0]);
    const rule = producer && nodes.get(producer);
    if (!producer || !rule?.absorbsActivation || producer.output.length !== 1) continue;
    if ((consumers.get(act.input[0]) ?? []).length !== 1 || outputs.has(act.input[0])) continue;
    if (!floatTensors.has(act.output[0])) continue;
    const b = clipBounds(act, inits);
    // Only a clamp at exactly 0 is reproduced exactly by a zero point at the bottom of the range.
    if (!b || b.lo !== 0 || !(b.hi > 0)) continue;
    absorptions.push({ producer, activation: act, lo: b.lo, hi: b.hi });
  }

  const absorbedInput = new Set(absorptions.map((a) => a.activation.input[0]));
  const observe = new Set<string>();
  for (const [n, rule] of nodes) {
    for (const i of rule.activations(n)) {
      const t = n.input[i];
      if (t && !inits.has(t)) observe.add(t);
    }
    if (rule.output === 'observed') {
      for (const o of n.output) if (o && !absorbedInput.has(o)) observe.add(o);
    }
  }
  for (const a of absorptions) observe.add(a.activation.output[0]);
  // Shared-parameter outputs take their input's range: nothing to observe.
  return { nodes, absorptions, observe: [...observe].filter((t) => floatTensors.has(t)), skipped };
}
