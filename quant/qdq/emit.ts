/**
 * Rewrites a float graph into a QDQ graph: QuantizeLinear/DequantizeLinear around the planned
 * nodes, int8 weights and int32 biases as initializers. ONNX Runtime then fuses each
 * DQ → op → Q unit into an int8 kernel (DESIGN.md §3); the shape of what is emitted here is what
 * its selectors match: one DQ per consumer, the op's output read only by its Q.
 */
import type { GraphProto, NodeProto, TensorProto } from 'onnx-buf';
import { attrFloat, consumerMap, graphOutputNames, initializerMap, makeNode, NameAllocator, producerMap, setAttr, topoSort } from '../onnx/graph.js';
import { makeTensor, tensorDims, tensorFloats } from '../onnx/tensor.js';
import { removeUnusedInitializers } from '../passes/fold-bn.js';
import type { Range } from '../observe/observer.js';
import type { Profile } from '../profiles.js';
import { activationQParams, quantizeBias, quantizeWeight, type QParams, type QuantizedWeight } from './numerics.js';
import type { Plan } from './plan.js';

export interface EmitResult {
  /** For each quantized activation tensor, a tensor that holds its dequantized value. */
  dequantized: Map<string, string>;
  /** Producer outputs renamed so that a DequantizeLinear can produce the graph output: new name → graph output. */
  renamedOutputs: Map<string, string>;
  quantizedNodes: number;
  /** Activation tensors given a Q node. */
  quantizedTensors: number;
  perChannelWeights: number;
}

interface TensorQ {
  qp: QParams;
  scaleName: string;
  zpName: string;
}

export function emitQdq(graph: GraphProto, plan: Plan, ranges: Map<string, Range>, profile: Profile): EmitResult {
  const names = new NameAllocator(graph);
  const inits = initializerMap(graph);
  const newInits: TensorProto[] = [];
  const newNodes: NodeProto[] = [];
  const actType = profile.activations;

  // 1. Absorb Relu/Clip(0, hi): the producer writes the activation's output directly; the
  //    clamp is done by the Q node's range, whose zero point sits at 0.
  const clamp = new Map<string, { lo: number; hi: number }>();
  const dropped = new Set<NodeProto>();
  for (const a of plan.absorptions) {
    a.producer.output[0] = a.activation.output[0];
    dropped.add(a.activation);
    clamp.set(a.activation.output[0], { lo: a.lo, hi: a.hi });
  }
  graph.node = graph.node.filter((n) => !dropped.has(n));
  const absorbedGone = new Set(plan.absorptions.map((a) => a.activation.input[0]));
  graph.valueInfo = graph.valueInfo.filter((v) => !absorbedGone.has(v.name));

  const producers = producerMap(graph);
  const consumers = consumerMap(graph);
  const graphOutputs = graphOutputNames(graph);

  // 2. Quantization parameters of every activation tensor, in graph order so that a
  //    shared-parameter op sees its input's parameters first.
  const tq = new Map<string, TensorQ>();
  // Short generated names: on a small model, ORT-style names (…_DequantizeLinear) cost more bytes
  // than int8 weights save. Every part of one quantized tensor shares its id (a3.s, a3.z, a3.q…).
  let nextId = 0;
  const ids = new Map<string, string>();
  const idOf = (tensor: string, prefix: string) => {
    let id = ids.get(tensor);
    if (!id) ids.set(tensor, (id = names.fresh(`${prefix}${nextId++}`)));
    return id;
  };
  const addQ = (tensor: string, qp: QParams): TensorQ => {
    const id = idOf(tensor, 'a');
    const scaleName = names.fresh(`${id}.s`);
    const zpName = names.fresh(`${id}.z`);
    newInits.push(makeTensor(scaleName, new Float32Array([qp.scale]), []));
    newInits.push(makeTensor(zpName, actType === 'uint8' ? new Uint8Array([qp.zeroPoint]) : new Int8Array([qp.zeroPoint]), []));
    const e = { qp, scaleName, zpName };
    tq.set(tensor, e);
    return e;
  };
  const qpFromRange = (tensor: string): QParams | undefined => {
    const r = ranges.get(tensor);
    if (!r) return undefined;
    const c = clamp.get(tensor);
    const range = c ? { min: c.lo, max: Math.min(r.max, c.hi) } : r;
    return activationQParams(range, actType);
  };
  const terminalFloat = (n: NodeProto, out: string, rule: { floatOutputWhenTerminal?: boolean }) =>
    rule.floatOutputWhenTerminal && graphOutputs.has(out) && (consumers.get(out) ?? []).length === 0;

  for (const n of graph.node) {
    const rule = plan.nodes.get(n);
    if (!rule) continue;
    for (const i of rule.activations(n)) {
      const t = n.input[i];
      if (!t || tq.has(t)) continue;
      const init = inits.get(t);
      if (init) {
        if (rule.weight && i === 1 && plan.nodes.has(n) && isWeight(n, rule, inits)) continue;
        const v = tensorFloats(init);
        let lo = 0, hi = 0;
        for (const x of v) { if (x < lo) lo = x; if (x > hi) hi = x; }
        addQ(t, activationQParams({ min: lo, max: hi }, actType));
        continue;
      }
      const qp = qpFromRange(t);
      if (qp) addQ(t, qp);
    }
    for (const o of n.output) {
      if (!o || tq.has(o) || terminalFloat(n, o, rule)) continue;
      if (rule.output === 'shareInput') {
        const src = tq.get(n.input[0]);
        if (src) tq.set(o, src);
      } else if (rule.output === 'fixed' && rule.fixedRange) {
        addQ(o, activationQParams(rule.fixedRange, actType));
      } else {
        const qp = qpFromRange(o);
        if (qp) addQ(o, qp);
      }
    }
  }

  // Input names as they are before DQ nodes are spliced in: a bias's scale follows input 0's.
  const activationOf = new Map<NodeProto, string>([...plan.nodes.keys()].map((n) => [n, n.input[0]]));

  // 3. Q after each quantized tensor's producer, one DQ per consumer. Every consumer, float ones
  //    included, reads through a DQ: the producer's output must feed nothing but its Q to fuse.
  const dequantized = new Map<string, string>();
  const renamedOutputs = new Map<string, string>();
  const rename = (n: NodeProto, from: string, to: string) => {
    for (let i = 0; i < n.input.length; i++) if (n.input[i] === from) n.input[i] = to;
  };
  for (const [t, q] of tq) {
    const producer = producers.get(t);
    let source = t;
    const isOutput = graphOutputs.has(t);
    if (isOutput) {
      if (!producer) continue; // a graph input passed straight through: leave it alone
      source = names.fresh(`${idOf(t, 'a')}.f`);
      producer.output[producer.output.indexOf(t)] = source;
      renamedOutputs.set(source, t);
    }
    const id = idOf(t, 'a');
    const qName = names.fresh(`${id}.q`);
    newNodes.push(makeNode('QuantizeLinear', [source, q.scaleName, q.zpName], [qName], ''));
    for (const c of consumers.get(t) ?? []) {
      const dq = names.fresh(`${id}.d`);
      newNodes.push(makeNode('DequantizeLinear', [qName, q.scaleName, q.zpName], [dq], ''));
      rename(c, t, dq);
      if (!dequantized.has(t)) dequantized.set(t, dq);
    }
    if (isOutput) {
      newNodes.push(makeNode('DequantizeLinear', [qName, q.scaleName, q.zpName], [t], ''));
      dequantized.set(t, t);
    }
  }

  // 4. Weights (int8 symmetric) and biases (int32, scale = input scale × weight scale).
  const weightCache = new Map<string, { w: QuantizedWeight; inputs: string[] }>();
  let perChannel = 0;
  for (const [n, rule] of plan.nodes) {
    if (!rule.weight) continue;
    const wName = n.input[1];
    const wInit = inits.get(wName);
    if (!wInit) continue;
    const spec = rule.weight(n, tensorDims(wInit));
    if (!spec) continue;
    const axis = profile.perChannel ? spec.axis : undefined;
    const key = `${wName}|${axis ?? 'tensor'}|${spec.zeroPoint ? 'zp' : ''}`;
    let cached = weightCache.get(key);
    if (!cached) {
      const w = quantizeWeight(tensorFloats(wInit), tensorDims(wInit), axis, profile.reduceRange, `weight ${wName}`);
      // Symmetric weights: zero point 0, which is DequantizeLinear's default where the fusion allows leaving it out.
      const q = names.fresh(`w${nextId++}`), s = names.fresh(`${q}.s`);
      const shape = w.scales.length > 1 ? [w.scales.length] : [];
      newInits.push(makeTensor(q, w.values, tensorDims(wInit)), makeTensor(s, w.scales, shape));
      const inputs = [q, s];
      if (spec.zeroPoint) {
        const z = names.fresh(`${q}.z`);
        newInits.push(makeTensor(z, new Int8Array(w.scales.length), shape));
        inputs.push(z);
      }
      cached = { w, inputs };
      weightCache.set(key, cached);
    }
    if (cached.w.axis !== undefined) perChannel++;
    const dqOut = names.fresh(`${cached.inputs[0]}.d`);
    const attrs: Record<string, number> = cached.w.axis !== undefined ? { axis: cached.w.axis } : {};
    newNodes.push(makeNode('DequantizeLinear', cached.inputs, [dqOut], '', attrs));
    n.input[1] = dqOut;

    const bName = rule.bias !== undefined ? n.input[rule.bias] : undefined;
    const bInit = bName ? inits.get(bName) : undefined;
    const xq = tq.get(activationOf.get(n)!);
    if (bName && bInit && xq) {
      let bias = tensorFloats(bInit);
      if (n.opType === 'Gemm') {
        // QGemm fuses only with beta = 1: fold beta into the bias values.
        const beta = attrFloat(n, 'beta', 1);
        if (beta !== 1) bias = bias.map((x) => x * beta);
        setAttr(n, 'beta', { float: 1 });
      }
      const cout = cached.w.scales.length > 1 ? cached.w.scales.length : bias.length;
      const b = quantizeBias(bias, xq.qp.scale, cached.w.scales, cout);
      // No zero point: DequantizeLinear's default is 0, which int32 biases always use.
      const q = names.fresh(`b${nextId++}`), s = names.fresh(`${q}.s`);
      const shape = b.scales.length > 1 ? [b.scales.length] : [];
      newInits.push(makeTensor(q, b.values, [b.values.length]), makeTensor(s, b.scales, shape));
      const bOut = names.fresh(`${q}.d`);
      newNodes.push(makeNode('DequantizeLinear', [q, s], [bOut], '', b.scales.length > 1 ? { axis: 0 } : {}));
      n.input[rule.bias!] = bOut;
    }
  }

  graph.initializer.push(...newInits);
  graph.node.push(...newNodes);
  removeUnusedInitializers(graph);
  topoSort(graph);
  return { dequantized, renamedOutputs, quantizedNodes: plan.nodes.size, quantizedTensors: new Set([...tq.values()]).size, perChannelWeights: perChannel };
}

function isWeight(n: NodeProto, rule: { weight?: (n: NodeProto, d: number[]) => unknown }, inits: Map<string, TensorProto>): boolean {
  const w = inits.get(n.input[1]);
  return !!(w && rule.weight?.(n, tensorDims(w)));
}
