/** A ModelSource over fixed files: for tests and for `edgeq serve --model NAME=FILE`. */
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { EdgeqError, fsError } from '../../quant/errors.js';
import { readModel } from '../../quant/onnx/model.js';
import { isModelName } from './names.js';
import type { ModelSource, ServedModel } from './types.js';

export function staticModels(entries: Array<ServedModel>): ModelSource {
  const byName = new Map<string, ServedModel>();
  for (const e of entries) {
    if (!isModelName(e.name)) throw new EdgeqError('E_CONFIG_INVALID', `model name ${JSON.stringify(e.name)} is not allowed: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    if (byName.has(e.name)) throw new EdgeqError('E_CONFIG_INVALID', `model ${e.name} is given twice`);
    if (!Number.isSafeInteger(e.version) || e.version < 0) throw new EdgeqError('E_CONFIG_INVALID', `model ${e.name}: version must be a whole number, got ${e.version}`);
    byName.set(e.name, { ...e });
  }
  return {
    resolve: (name) => {
      const m = byName.get(name);
      return m && { ...m };
    },
    list: () => [...byName.values()].map((m) => ({ ...m })),
  };
}

const INT8_OPS = new Set(['QuantizeLinear', 'DequantizeLinear', 'QLinearConv', 'QLinearMatMul', 'QGemm', 'ConvInteger', 'MatMulInteger', 'DynamicQuantizeLinear']);

/**
 * `NAME=FILE` (or just `FILE`, named after the file without `.onnx`) as a served model, version 1.
 * The kind is int8 when the graph holds quantization ops, fp32 otherwise.
 */
export function modelFromSpec(spec: string, version = 1): ServedModel {
  const eq = spec.indexOf('=');
  const path = eq >= 0 ? spec.slice(eq + 1) : spec;
  const name = eq >= 0 ? spec.slice(0, eq) : basename(path).replace(/\.onnx$/i, '');
  if (path === '') throw new EdgeqError('E_ARGUMENT', `--model ${spec}: no file given (use NAME=FILE)`);
  if (!isModelName(name)) throw new EdgeqError('E_ARGUMENT', `--model ${spec}: model name ${JSON.stringify(name)} is not allowed: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  try {
    statSync(path);
  } catch (e) {
    throw fsError(e, path);
  }
  const graph = readModel(path, { externalData: 'keep' }).graph!;
  const kind = graph.node.some((n) => INT8_OPS.has(n.opType)) ? 'int8' : 'fp32';
  return { name, version, kind, path };
}
