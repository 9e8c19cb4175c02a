/** Turns Constant nodes of the main graph into initializers, so later passes see weights in one place. */
import { create } from '@bufbuild/protobuf';
import { TensorProtoSchema } from 'onnx-buf';
import type { GraphProto, NodeProto, TensorProto } from 'onnx-buf';
import { DT } from '../onnx/tensor.js';

function constantValue(node: NodeProto): TensorProto | undefined {
  for (const a of node.attribute) {
    switch (a.name) {
      case 'value':
        return a.t;
      case 'value_float':
        return create(TensorProtoSchema, { dataType: DT.FLOAT, dims: [], floatData: [a.f] });
      case 'value_floats':
        return create(TensorProtoSchema, { dataType: DT.FLOAT, dims: [BigInt(a.floats.length)], floatData: [...a.floats] });
      case 'value_int':
        return create(TensorProtoSchema, { dataType: DT.INT64, dims: [], int64Data: [a.i] });
      case 'value_ints':
        return create(TensorProtoSchema, { dataType: DT.INT64, dims: [BigInt(a.ints.length)], int64Data: [...a.ints] });
    }
  }
  // value_string(s) and sparse_value stay as nodes: nothing downstream quantizes them.
  return undefined;
}

/** Returns the number of Constant nodes folded. */
export function foldConstantNodes(graph: GraphProto): number {
  const kept: NodeProto[] = [];
  let folded = 0;
  for (const node of graph.node) {
    const t = node.opType === 'Constant' && (node.domain === '' || node.domain === 'ai.onnx') ? constantValue(node) : undefined;
    if (!t || node.output.length !== 1) {
      kept.push(node);
      continue;
    }
    t.name = node.output[0];
    graph.initializer.push(t);
    folded++;
  }
  graph.node = kept;
  return folded;
}

/**
 * Removes Identity nodes that merely re-expose an initializer (PyTorch emits them for shared
 * parameters), pointing their consumers at the initializer itself. Returns how many went.
 */
export function foldInitializerIdentities(graph: GraphProto): number {
  const inits = new Set(graph.initializer.map((t) => t.name));
  const outputs = new Set(graph.output.map((o) => o.name));
  const alias = new Map<string, string>();
  graph.node = graph.node.filter((n) => {
    if (n.opType !== 'Identity' || n.domain !== '' || !inits.has(n.input[0]) || outputs.has(n.output[0])) return true;
    alias.set(n.output[0], n.input[0]);
    return false;
  });
  if (alias.size === 0) return 0;
  for (const n of graph.node) {
    for (let i = 0; i < n.input.length; i++) n.input[i] = alias.get(n.input[i]) ?? n.input[i];
  }
  return alias.size;
}
