/**
 * Folds BatchNormalization (inference mode) into the Conv, ConvTranspose or Gemm before it:
 * y = gamma * (x - mean) / sqrt(var + eps) + beta is a per-channel affine map, so it becomes part
 * of the weights and bias. Models exported unfolded (Paddle2ONNX, PyTorch TrainingMode.PRESERVE)
 * would otherwise quantize the conv output before BN, with a range that BN then distorts.
 */
import type { GraphProto, NodeProto, TensorProto } from 'onnx-buf';
import { attrFloat, attrInt, consumerMap, graphOutputNames, initializerMap, NameAllocator, setAttr } from '../onnx/graph.js';
import { makeTensor, tensorDims, tensorFloats } from '../onnx/tensor.js';

const FOLDABLE = new Set(['Conv', 'ConvTranspose', 'Gemm']);

export interface FoldedBn {
  bn: string;
  into: string;
}

function bnScaleShift(inits: Map<string, TensorProto>, bn: NodeProto): { scale: Float32Array; shift: Float32Array } | undefined {
  const [gammaT, betaT, meanT, varT] = bn.input.slice(1, 5).map((n) => inits.get(n));
  if (!gammaT || !betaT || !meanT || !varT) return undefined;
  const gamma = tensorFloats(gammaT), beta = tensorFloats(betaT), mean = tensorFloats(meanT), variance = tensorFloats(varT);
  const c = gamma.length;
  if (beta.length !== c || mean.length !== c || variance.length !== c) return undefined;
  const eps = attrFloat(bn, 'epsilon', 1e-5);
  const scale = new Float32Array(c), shift = new Float32Array(c);
  for (let i = 0; i < c; i++) {
    // Double precision here keeps the folded model within float rounding of the original.
    const s = gamma[i] / Math.sqrt(variance[i] + eps);
    scale[i] = s;
    shift[i] = beta[i] - mean[i] * s;
  }
  return { scale, shift };
}

/**
 * Output channel of each weight element, for the layouts of the three folded ops:
 * Conv [Cout, Cin/g, k…] → axis 0; ConvTranspose [Cin, Cout/g, k…] → grouped axis 1;
 * Gemm B [N, K] with transB, else [K, N].
 */
function channelOf(op: NodeProto, dims: number[], group: number): (i: number) => number {
  const total = dims.reduce((a, b) => a * b, 1);
  if (op.opType === 'Conv') {
    const per = total / dims[0];
    return (i) => Math.floor(i / per);
  }
  if (op.opType === 'ConvTranspose') {
    const inner = dims.slice(2).reduce((a, b) => a * b, 1);
    const coutPerGroup = dims[1];
    const cinPerGroup = dims[0] / group;
    return (i) => {
      const ci = Math.floor(i / (coutPerGroup * inner));
      const j = Math.floor(i / inner) % coutPerGroup;
      return Math.floor(ci / cinPerGroup) * coutPerGroup + j;
    };
  }
  const transB = attrInt(op, 'transB', 0) === 1;
  return transB ? (i) => Math.floor(i / dims[1]) : (i) => i % dims[1];
}

function outChannels(op: NodeProto, dims: number[], group: number): number {
  if (op.opType === 'Conv') return dims[0];
  if (op.opType === 'ConvTranspose') return dims[1] * group;
  return attrInt(op, 'transB', 0) === 1 ? dims[0] : dims[1];
}

/** Folds every foldable BatchNormalization; returns what was folded into what. */
export function foldBatchNorm(graph: GraphProto): FoldedBn[] {
  const folded: FoldedBn[] = [];
  const names = new NameAllocator(graph);
  const inits = initializerMap(graph);
  const consumers = consumerMap(graph);
  const outputs = graphOutputNames(graph);
  const producers = new Map<string, NodeProto>();
  for (const n of graph.node) for (const o of n.output) producers.set(o, n);
  const removed = new Set<NodeProto>();

  for (const bn of graph.node) {
    if (bn.opType !== 'BatchNormalization' || bn.domain !== '') continue;
    // Training-mode BN (or one exporting running statistics) is not an affine map of its input.
    if (attrInt(bn, 'training_mode', 0) !== 0 || bn.output.filter((o) => o !== '').length !== 1) continue;
    const op = producers.get(bn.input[0]);
    if (!op || !FOLDABLE.has(op.opType) || op.domain !== '' || removed.has(op)) continue;
    if ((consumers.get(op.output[0]) ?? []).length !== 1 || outputs.has(op.output[0])) continue;
    const wT = inits.get(op.input[1]);
    if (!wT) continue;
    const ss = bnScaleShift(inits, bn);
    if (!ss) continue;
    const dims = tensorDims(wT);
    const group = attrInt(op, 'group', 1);
    const cout = outChannels(op, dims, group);
    if (cout !== ss.scale.length) continue;
    const biasName = op.input[2] ?? '';
    const bT = biasName ? inits.get(biasName) : undefined;
    if (biasName && !bT) continue; // a bias computed at run time cannot be folded into
    let bias = bT ? tensorFloats(bT) : new Float32Array(cout);
    if (bias.length === 1 && cout > 1) bias = new Float32Array(cout).fill(bias[0]);
    if (bias.length !== cout) continue;

    const alpha = op.opType === 'Gemm' ? attrFloat(op, 'alpha', 1) : 1;
    const beta = op.opType === 'Gemm' ? attrFloat(op, 'beta', 1) : 1;
    const w = tensorFloats(wT);
    const ch = channelOf(op, dims, group);
    const w2 = new Float32Array(w.length);
    for (let i = 0; i < w.length; i++) w2[i] = w[i] * alpha * ss.scale[ch(i)];
    const b2 = new Float32Array(cout);
    for (let c = 0; c < cout; c++) b2[c] = bias[c] * beta * ss.scale[c] + ss.shift[c];

    // New initializers: the old ones may be shared with other nodes.
    const wName = names.fresh(`${op.input[1]}_bnfold`);
    const bName = names.fresh(`${biasName || op.output[0]}_bias_bnfold`);
    graph.initializer.push(makeTensor(wName, w2, dims), makeTensor(bName, b2, [cout]));
    inits.set(wName, graph.initializer[graph.initializer.length - 2]);
    inits.set(bName, graph.initializer[graph.initializer.length - 1]);
    op.input[1] = wName;
    if (op.input.length < 3) op.input.push(bName);
    else op.input[2] = bName;
    if (op.opType === 'Gemm') {
      setAttr(op, 'alpha', { float: 1 });
      setAttr(op, 'beta', { float: 1 });
    }
    op.output[0] = bn.output[0];
    removed.add(bn);
    folded.push({ bn: bn.name || bn.output[0], into: op.name || op.output[0] });
  }
  graph.node = graph.node.filter((n) => !removed.has(n));
  removeUnusedInitializers(graph);
  return folded;
}

/** Drops initializers no node reads (and that are not graph inputs or outputs). */
export function removeUnusedInitializers(graph: GraphProto): void {
  const used = new Set<string>();
  const visit = (g: GraphProto) => {
    for (const n of g.node) {
      for (const i of n.input) used.add(i);
      for (const a of n.attribute) {
        if (a.g) visit(a.g);
        a.graphs.forEach(visit);
      }
    }
    for (const o of g.output) used.add(o.name);
  };
  visit(graph);
  for (const i of graph.input) used.add(i.name);
  graph.initializer = graph.initializer.filter((t) => used.has(t.name));
}
