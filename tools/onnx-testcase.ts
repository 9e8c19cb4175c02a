/**
 * ONNX backend test cases (the `model.onnx` + `test_data_set_N/input_M.pb` layout of onnx's
 * test data) run through onnxruntime: loading `.pb` TensorProto files into ort tensors,
 * bit-comparing outputs, and the codec round-trip check (ORT on the original model vs ORT on
 * encodeModel(readModel(model))). Shared by tools/conformance.ts and test/quant/onnx.test.ts.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { TensorProtoSchema } from 'onnx-buf';
import type { TensorProto } from 'onnx-buf';
import '../quant/ort-env.js';
import * as ort from 'onnxruntime-node';
import { readModel, encodeModel } from '../quant/onnx/model.js';
import { DT, dataTypeName, elementCount, tensorValues } from '../quant/onnx/tensor.js';

/** Default location of the Debian `libonnx-testdata` package's data. */
export const DEFAULT_TESTDATA_ROOT = '/usr/share/libonnx-testdata/data';
/** The sub-directories of the test data the conformance run covers. */
export const DEFAULT_TESTDATA_DIRS = ['node', 'pytorch-converted'];

export interface TestCase {
  /** Directory name, e.g. `test_conv_with_strides_padding`. */
  name: string;
  /** Path relative to the data root, e.g. `node/test_if`. */
  id: string;
  dir: string;
  modelPath: string;
  /** `test_data_set_*` directories, in numeric order. */
  dataSets: string[];
}

function numericSuffix(name: string): number {
  const m = /(\d+)(?:\.pb)?$/.exec(name);
  return m ? Number(m[1]) : Number.MAX_SAFE_INTEGER;
}

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The test case in `dir` (a directory holding model.onnx), or undefined if it is not one. */
export function testCaseAt(dir: string, root = dir): TestCase | undefined {
  const modelPath = join(dir, 'model.onnx');
  try {
    if (!statSync(modelPath).isFile()) return undefined;
  } catch {
    return undefined;
  }
  const dataSets = readdirSync(dir)
    .filter((n) => n.startsWith('test_data_set_') && isDir(join(dir, n)))
    .sort((a, b) => numericSuffix(a) - numericSuffix(b))
    .map((n) => join(dir, n));
  const id = relative(root, dir) || dir;
  return { name: basename(dir), id, dir, modelPath, dataSets };
}

/**
 * Every directory holding a `model.onnx` under `root/<sub>` for each of `subdirs` (searched
 * recursively; `root` itself when none of them exists), sorted by id. `filters` keep only cases
 * whose name (or, for a filter containing `/`, whose id such as `node/test_if`) contains one.
 */
export function findTestCases(root: string, subdirs: readonly string[] = DEFAULT_TESTDATA_DIRS, filters: readonly string[] = []): TestCase[] {
  const out: TestCase[] = [];
  const walk = (dir: string): void => {
    const tc = testCaseAt(dir, root);
    if (tc) {
      out.push(tc);
      return;
    }
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names.sort()) {
      const p = join(dir, n);
      if (isDir(p)) walk(p);
    }
  };
  const present = subdirs.filter((sub) => isDir(join(root, sub)));
  for (const sub of present.length ? present : ['']) walk(join(root, sub));
  out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const keep = (t: TestCase): boolean => filters.some((f) => (f.includes('/') ? t.id : t.name).includes(f));
  return filters.length ? out.filter(keep) : out;
}

/** Files named `<prefix>_<N>.pb` in a data set directory, in numeric order. */
export function dataSetFiles(dataSetDir: string, prefix: 'input' | 'output'): string[] {
  const re = new RegExp(`^${prefix}_\\d+\\.pb$`);
  return readdirSync(dataSetDir)
    .filter((n) => re.test(n))
    .sort((a, b) => numericSuffix(a) - numericSuffix(b))
    .map((n) => join(dataSetDir, n));
}

/** Thrown when a `.pb` file holds something ort tensors cannot carry (e.g. bfloat16, a sequence). */
export class UnsupportedTensorError extends Error {
  override name = 'UnsupportedTensorError';
}

/** Converts a TensorProto (raw_data or typed fields) to an ort.Tensor. */
export function tensorProtoToOrt(t: TensorProto, label = t.name || 'tensor'): ort.Tensor {
  const dims = t.dims.map((d) => {
    const n = Number(d);
    if (!Number.isSafeInteger(n) || n < 0) throw new UnsupportedTensorError(`${label}: bad dimension ${d}`);
    return n;
  });
  switch (t.dataType as DT) {
    case DT.STRING: {
      const dec = new TextDecoder('utf-8');
      return new ort.Tensor('string', t.stringData.map((s) => dec.decode(s)), dims);
    }
    case DT.FLOAT16: {
      const n = elementCount(dims);
      const bits = new Uint16Array(n);
      if (t.rawData.length > 0) {
        if (t.rawData.length !== n * 2) throw new UnsupportedTensorError(`${label}: raw_data holds ${t.rawData.length} bytes, dims need ${n * 2}`);
        new Uint8Array(bits.buffer).set(t.rawData);
      } else {
        // float16 values live in int32_data as their 16-bit patterns.
        if (t.int32Data.length !== n) throw new UnsupportedTensorError(`${label}: holds ${t.int32Data.length} values, dims need ${n}`);
        for (let i = 0; i < n; i++) bits[i] = t.int32Data[i] & 0xffff;
      }
      return new ort.Tensor('float16', bits, dims);
    }
    case DT.FLOAT: return new ort.Tensor('float32', tensorValues(t) as Float32Array, dims);
    case DT.DOUBLE: return new ort.Tensor('float64', tensorValues(t) as Float64Array, dims);
    case DT.INT8: return new ort.Tensor('int8', tensorValues(t) as Int8Array, dims);
    case DT.UINT8: return new ort.Tensor('uint8', tensorValues(t) as Uint8Array, dims);
    case DT.INT16: return new ort.Tensor('int16', tensorValues(t) as Int16Array, dims);
    case DT.UINT16: return new ort.Tensor('uint16', tensorValues(t) as Uint16Array, dims);
    case DT.INT32: return new ort.Tensor('int32', tensorValues(t) as Int32Array, dims);
    case DT.UINT32: return new ort.Tensor('uint32', tensorValues(t) as Uint32Array, dims);
    case DT.INT64: return new ort.Tensor('int64', tensorValues(t) as BigInt64Array, dims);
    case DT.UINT64: return new ort.Tensor('uint64', tensorValues(t) as BigUint64Array, dims);
    case DT.BOOL: return new ort.Tensor('bool', tensorValues(t) as Uint8Array, dims);
    default:
      throw new UnsupportedTensorError(`${label}: element type ${dataTypeName(t.dataType)} has no ort.Tensor counterpart here`);
  }
}

/** Reads a `.pb` file holding one serialized TensorProto. */
export function readTensorProtoFile(path: string): TensorProto {
  let t: TensorProto;
  try {
    t = fromBinary(TensorProtoSchema, readFileSync(path));
  } catch (e) {
    throw new UnsupportedTensorError(`${path} is not a TensorProto: ${(e as Error).message}`);
  }
  if (t.dataType === DT.UNDEFINED) throw new UnsupportedTensorError(`${path} is not a TensorProto (no data type; a sequence, map or optional?)`);
  return t;
}

/** Loads a `.pb` TensorProto file as an ort.Tensor. */
export function loadTensorFile(path: string): ort.Tensor {
  return tensorProtoToOrt(readTensorProtoFile(path), path);
}

/** Builds the feeds for a data set: `input_i.pb` goes to the session's i-th input name. */
export function loadFeeds(dataSetDir: string, inputNames: readonly string[]): Record<string, ort.Tensor> {
  const files = dataSetFiles(dataSetDir, 'input');
  if (files.length > inputNames.length) {
    throw new UnsupportedTensorError(`${dataSetDir} has ${files.length} inputs, the session takes ${inputNames.length}`);
  }
  const feeds: Record<string, ort.Tensor> = {};
  files.forEach((f, i) => { feeds[inputNames[i]] = loadTensorFile(f); });
  return feeds;
}

/** The bytes of a numeric tensor's data (a view, not a copy). */
export function tensorBytes(t: ort.Tensor): Uint8Array {
  const d = t.data as ArrayBufferView;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

function bytesEqual(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/**
 * Bit-compares two tensors: same element type, same dims and the same data bytes (so NaN payloads
 * and signed zeros count); string tensors compare their strings. Returns undefined if identical,
 * otherwise a short description of the first difference.
 */
export function diffTensors(a: ort.Tensor, b: ort.Tensor): string | undefined {
  if (a.type !== b.type) return `type ${a.type} vs ${b.type}`;
  if (a.dims.length !== b.dims.length || a.dims.some((d, i) => d !== b.dims[i])) return `dims [${a.dims.join(',')}] vs [${b.dims.join(',')}]`;
  if (a.type === 'string') {
    const x = a.data as string[];
    const y = b.data as string[];
    if (x.length !== y.length) return `${x.length} vs ${y.length} strings`;
    const i = x.findIndex((s, k) => s !== y[k]);
    return i < 0 ? undefined : `string ${i}: ${JSON.stringify(x[i])} vs ${JSON.stringify(y[i])}`;
  }
  const bx = tensorBytes(a);
  const by = tensorBytes(b);
  const at = bytesEqual(bx, by);
  if (at < 0) return undefined;
  if (bx.length !== by.length) return `${bx.length} vs ${by.length} data bytes`;
  const size = Math.max(1, Math.round(bx.length / Math.max(1, a.size)));
  const el = Math.floor(at / size);
  return `element ${el} differs (bytes ${hex(bx, el * size, size)} vs ${hex(by, el * size, size)})`;
}

function hex(b: Uint8Array, off: number, n: number): string {
  return Array.from(b.subarray(off, off + n), (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Compares two sets of outputs by name. Returns undefined if all are bit-identical. */
export function diffOutputs(a: ort.InferenceSession.OnnxValueMapType, b: ort.InferenceSession.OnnxValueMapType): string | undefined {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  if (ka.join('\0') !== kb.join('\0')) return `output names [${ka.join(', ')}] vs [${kb.join(', ')}]`;
  for (const k of ka) {
    const d = diffTensors(a[k] as ort.Tensor, b[k] as ort.Tensor);
    if (d) return `output ${k}: ${d}`;
  }
  return undefined;
}

/** Session options for reproducible, cheap test runs: one thread, no spinning, quiet logs. */
export function testSessionOptions(): ort.InferenceSession.SessionOptions {
  return {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    logSeverityLevel: 4,
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
  };
}

export type CaseStatus = 'passed' | 'failed' | 'skipped';

export interface CaseResult {
  id: string;
  status: CaseStatus;
  /** Why it failed or was skipped. */
  reason?: string;
  /** Data sets run (on both models). */
  dataSets: number;
  /** Whether the round-tripped bytes equal the file's bytes (set once the round trip ran). */
  byteIdentical?: boolean;
}

function message(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return m.replace(/\s+/g, ' ').trim().slice(0, 300);
}

function disposeOutputs(outs: ort.InferenceSession.OnnxValueMapType | undefined): void {
  if (!outs) return;
  for (const v of Object.values(outs)) {
    try { (v as ort.Tensor).dispose(); } catch { /* already gone */ }
  }
}

/** The codec round trip under test: encodeModel(readModel(path)). */
export function roundTripBytes(modelPath: string): Uint8Array {
  return encodeModel(readModel(modelPath));
}

/**
 * The codec round-trip check for one test case: ORT on the original file vs ORT on
 * encodeModel(readModel(file)), every data set, every output bit-identical.
 * `skipped` means ORT cannot load the original or run it on its own inputs (or the inputs cannot
 * be expressed as ort tensors, or the original itself gives different outputs on two runs).
 * `roundTrip` replaces the codec under test (the tests use it to prove a broken one is caught).
 */
export async function checkRoundTrip(tc: TestCase, roundTrip: (modelPath: string) => Uint8Array = roundTripBytes): Promise<CaseResult> {
  let byteIdentical: boolean | undefined;
  const res = (status: CaseStatus, reason?: string, dataSets = 0): CaseResult => ({ id: tc.id, status, reason, dataSets, byteIdentical });
  if (tc.dataSets.length === 0) return res('skipped', 'no test_data_set_* directory, nothing to compare');
  let original: ort.InferenceSession;
  try {
    original = await ort.InferenceSession.create(tc.modelPath, testSessionOptions());
  } catch (e) {
    return res('skipped', `ORT cannot load the original: ${message(e)}`);
  }
  let copy: ort.InferenceSession | undefined;
  const expected: ort.InferenceSession.OnnxValueMapType[] = [];
  try {
    // First make sure the original runs on its own inputs, so a codec problem is never blamed
    // on a model ORT does not support.
    const nonTensor = [...original.inputMetadata, ...original.outputMetadata].find((m) => !m.isTensor);
    if (nonTensor) return res('skipped', `ORT cannot run the original here: ${nonTensor.name} is not a tensor (sequence, map or optional), and onnxruntime-node passes only tensors`);
    const feedsPerSet: Array<Record<string, ort.Tensor>> = [];
    try {
      for (const ds of tc.dataSets) {
        const feeds = loadFeeds(ds, original.inputNames);
        feedsPerSet.push(feeds);
        expected.push(await original.run(feeds));
      }
    } catch (e) {
      return res('skipped', `ORT cannot run the original on its inputs: ${message(e)}`);
    }
    let bytes: Uint8Array;
    try {
      bytes = roundTrip(tc.modelPath);
    } catch (e) {
      return res('failed', `codec: ${message(e)}`);
    }
    byteIdentical = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).equals(readFileSync(tc.modelPath));
    try {
      copy = await ort.InferenceSession.create(bytes, testSessionOptions());
    } catch (e) {
      return res('failed', `ORT cannot load the round-tripped model: ${message(e)}`);
    }
    const io = (s: ort.InferenceSession): string => JSON.stringify([s.inputMetadata, s.outputMetadata]);
    if (io(original) !== io(copy)) return res('failed', `inputs/outputs changed: ${io(original)} vs ${io(copy)}`);
    for (let i = 0; i < feedsPerSet.length; i++) {
      const setName = basename(tc.dataSets[i]);
      let got: ort.InferenceSession.OnnxValueMapType;
      try {
        got = await copy.run(feedsPerSet[i]);
      } catch (e) {
        return res('failed', `${setName}: ORT cannot run the round-tripped model: ${message(e)}`, i);
      }
      const diff = diffOutputs(expected[i], got);
      disposeOutputs(got);
      if (diff) {
        // A model with random ops (Bernoulli, RandomNormal, …) may differ from itself run to run.
        const again = await original.run(feedsPerSet[i]);
        const selfDiff = diffOutputs(expected[i], again);
        disposeOutputs(again);
        if (selfDiff) return res('skipped', `${setName}: the original is nondeterministic (${selfDiff})`, i);
        return res('failed', `${setName}: ${diff}`, i);
      }
    }
    return res('passed', undefined, feedsPerSet.length);
  } finally {
    expected.forEach(disposeOutputs);
    await original.release();
    if (copy) await copy.release();
  }
}
