/**
 * From what inference sees (onnxruntime tensors, typed arrays) to what the store keeps
 * (SampleTensor: one sample, raw little-endian bytes). edgeq runs on little-endian CPUs
 * (x86-64, ARM64), where a typed array's bytes are already little-endian.
 */
import { EdgeqError } from '../../quant/errors.js';
import { DTYPE_SIZE, elementCount, isTensorDtype, type SampleTensor, type TensorDtype } from '../store/index.js';

/** The shape of an onnxruntime-node Tensor that matters here (type, dims, data). */
export interface TensorLike {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: unknown;
}

function dtypeOfArray(data: ArrayBufferView): TensorDtype | undefined {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Int8Array) return 'int8';
  if (data instanceof Int16Array) return 'int16';
  if (data instanceof Uint16Array) return 'uint16';
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof BigInt64Array) return 'int64';
  return undefined;
}

function bytesOf(data: ArrayBufferView): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

function checkLength(name: string, dtype: TensorDtype, shape: readonly number[], bytes: number): void {
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw new EdgeqError('E_CAPTURE_INVALID', `input "${name}": shape [${shape.join(', ')}] is not a list of whole numbers`);
  const want = elementCount(shape) * DTYPE_SIZE[dtype];
  if (bytes !== want) throw new EdgeqError('E_CAPTURE_INVALID', `input "${name}": ${bytes} bytes of data, shape [${shape.join(', ')}] of ${dtype} needs ${want}`);
}

/**
 * A typed array (C order) as a SampleTensor; `dtype` is needed where the array type is
 * ambiguous (bool in a Uint8Array, float16 in a Uint16Array). The bytes are a view on the
 * array's memory, not a copy.
 */
export function fromTypedArray(name: string, data: ArrayBufferView, shape: readonly number[], dtype?: TensorDtype): SampleTensor {
  const d = dtype ?? dtypeOfArray(data);
  if (!d || !isTensorDtype(d)) throw new EdgeqError('E_DTYPE_MISMATCH', `input "${name}": cannot capture a ${data.constructor.name}`);
  checkLength(name, d, shape, data.byteLength);
  return { name, dtype: d, shape: [...shape], data: bytesOf(data) };
}

/** An onnxruntime Tensor as a SampleTensor (its bytes are a view, not a copy). */
export function toSampleTensor(name: string, t: TensorLike): SampleTensor {
  if (!isTensorDtype(t.type)) throw new EdgeqError('E_DTYPE_MISMATCH', `input "${name}": tensors of type ${t.type} cannot be captured`);
  if (!ArrayBuffer.isView(t.data)) throw new EdgeqError('E_CAPTURE_INVALID', `input "${name}": the tensor's data is not in memory (type ${t.type})`);
  return fromTypedArray(name, t.data, t.dims, t.type);
}

/**
 * Splits a tensor with a leading batch axis N into N tensors of leading dim 1 (copies the
 * bytes); `count` takes only the first ones.
 */
export function splitBatch(t: SampleTensor, count?: number): SampleTensor[] {
  if (!isTensorDtype(t.dtype)) throw new EdgeqError('E_DTYPE_MISMATCH', `input "${t.name}": dtype ${t.dtype} cannot be captured`);
  if (t.shape.length === 0) throw new EdgeqError('E_SHAPE_MISMATCH', `input "${t.name}": a scalar has no batch axis to split`);
  checkLength(t.name, t.dtype, t.shape, t.data.byteLength);
  const n = Math.min(t.shape[0], count ?? Infinity);
  const step = t.shape[0] === 0 ? 0 : t.data.byteLength / t.shape[0];
  const shape = [1, ...t.shape.slice(1)];
  const out: SampleTensor[] = [];
  for (let i = 0; i < n; i++) out.push({ name: t.name, dtype: t.dtype, shape: [...shape], data: t.data.slice(i * step, (i + 1) * step) });
  return out;
}

/** The number of samples in one request's inputs: the shared leading dim. */
export function batchSize(tensors: readonly SampleTensor[]): number {
  if (!Array.isArray(tensors)) throw new EdgeqError('E_CAPTURE_INVALID', 'a request\'s inputs must be a list of tensors');
  if (tensors.length === 0) throw new EdgeqError('E_CAPTURE_INVALID', 'a request with no inputs has nothing to capture');
  const sizes = tensors.map((t) => (typeof t === 'object' && t !== null && Array.isArray(t.shape) && t.shape.length > 0 ? t.shape[0] : NaN));
  if (sizes.some((n) => !Number.isSafeInteger(n) || n < 0) || sizes.some((n) => n !== sizes[0])) {
    throw new EdgeqError('E_SHAPE_MISMATCH', `the inputs of one request must share a leading batch dim, got ${tensors.map((t) => `${String(t?.name)} [${Array.isArray(t?.shape) ? t.shape.join(', ') : '?'}]`).join(', ')}`);
  }
  return sizes[0];
}

/**
 * One request's inputs (each [N, …]) as N samples, each a list of [1, …] tensors.
 * `count` takes only the first samples. The bytes are copied: the caller may reuse its buffers.
 */
export function splitSamples(tensors: readonly SampleTensor[], count?: number): SampleTensor[][] {
  const n = batchSize(tensors);
  const k = Math.max(0, Math.min(n, count ?? n));
  const per = tensors.map((t) => splitBatch(t, k));
  return Array.from({ length: k }, (_, i) => per.map((p) => p[i]));
}
