/** Small ONNX models built in code, for tests that need a graph of a precise shape. */
import { create } from '@bufbuild/protobuf';
import { GraphProtoSchema, ModelProtoSchema, OperatorSetIdProtoSchema } from 'onnx-buf';
import type { ModelProto, NodeProto, TensorProto, ValueInfoProto } from 'onnx-buf';
import { DT } from '../../quant/onnx/tensor.js';
import { rng } from './random.js';

import { makeValueInfo } from '../../quant/onnx/graph.js';
export { makeNode } from '../../quant/onnx/graph.js';
export { makeTensor } from '../../quant/onnx/tensor.js';

/** A float tensor value info; string dims are symbolic (dynamic). */
export function floatInput(name: string, dims: Array<number | string>, elemType: number = DT.FLOAT): ValueInfoProto {
  return makeValueInfo(name, elemType, dims);
}

export function buildModel(nodes: NodeProto[], inputs: ValueInfoProto[], outputs: ValueInfoProto[], initializers: TensorProto[], opset = 13): ModelProto {
  return create(ModelProtoSchema, {
    irVersion: 8n,
    producerName: 'edgeq-test',
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: BigInt(opset) })],
    graph: create(GraphProtoSchema, { name: 'test', node: nodes, input: inputs, output: outputs, initializer: initializers }),
  });
}

/** Deterministic pseudo-random floats in [-scale, scale). */
export function randomFloats(n: number, seed: number, scale = 1): Float32Array {
  const next = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() * 2 - 1) * scale;
  return out;
}
