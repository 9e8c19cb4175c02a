/** TensorProto <-> typed arrays, for the element types the quantizer reads and writes. */
import { create } from '@bufbuild/protobuf';
import { TensorProtoSchema, TensorProto_DataType as DT } from 'onnx-buf';
import type { TensorProto } from 'onnx-buf';
import { EdgeqError } from '../errors.js';

export { DT };

export type NumericArray = Float32Array | Float64Array | Int8Array | Uint8Array | Int16Array | Uint16Array | Int32Array | Uint32Array | BigInt64Array | BigUint64Array;

const CTORS: Partial<Record<DT, { new (buf: ArrayBufferLike, off: number, len: number): NumericArray; new (len: number): NumericArray; BYTES_PER_ELEMENT: number }>> = {
  [DT.FLOAT]: Float32Array,
  [DT.DOUBLE]: Float64Array,
  [DT.INT8]: Int8Array,
  [DT.UINT8]: Uint8Array,
  [DT.INT16]: Int16Array,
  [DT.UINT16]: Uint16Array,
  [DT.INT32]: Int32Array,
  [DT.UINT32]: Uint32Array,
  [DT.INT64]: BigInt64Array,
  [DT.UINT64]: BigUint64Array,
  [DT.BOOL]: Uint8Array,
};

export function dataTypeName(dt: number): string {
  return DT[dt] ?? `type ${dt}`;
}

export function elementCount(dims: readonly (bigint | number)[]): number {
  let n = 1;
  for (const d of dims) n *= Number(d);
  return n;
}

/** Reads a tensor's values. The result never aliases the protobuf buffer. */
export function tensorValues(t: TensorProto): NumericArray {
  const Ctor = CTORS[t.dataType as DT];
  if (!Ctor) throw new EdgeqError('E_MODEL_UNSUPPORTED', `tensor ${t.name}: element type ${dataTypeName(t.dataType)} is not supported here`);
  const n = elementCount(t.dims);
  if (t.dims.some((d) => d < 0n) || !Number.isSafeInteger(n)) {
    throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name}: dims [${t.dims.join(', ')}] are not a valid tensor shape`);
  }
  if (t.rawData.length > 0) {
    if (t.rawData.length !== n * Ctor.BYTES_PER_ELEMENT) {
      throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name}: raw_data holds ${t.rawData.length} bytes, dims need ${n * Ctor.BYTES_PER_ELEMENT}`);
    }
    // Copy into a fresh, aligned buffer: raw_data is a view at an arbitrary offset.
    const copy = new Uint8Array(t.rawData.length);
    copy.set(t.rawData);
    return new Ctor(copy.buffer, 0, n);
  }
  let src: ArrayLike<number | bigint>;
  switch (t.dataType as DT) {
    case DT.FLOAT: src = t.floatData; break;
    case DT.DOUBLE: src = t.doubleData; break;
    case DT.INT64: src = t.int64Data; break;
    case DT.UINT32: case DT.UINT64: src = t.uint64Data; break;
    default: src = t.int32Data; // int8/uint8/int16/uint16/int32/bool live in int32_data
  }
  if (src.length !== n) throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name}: holds ${src.length} values, dims need ${n}`);
  // Allocated only now: dims alone must not make us allocate what the model does not hold.
  const out = new Ctor(n);
  if (out instanceof BigInt64Array || out instanceof BigUint64Array) {
    for (let i = 0; i < n; i++) out[i] = BigInt(src[i]);
  } else {
    for (let i = 0; i < n; i++) out[i] = Number(src[i]);
  }
  return out;
}

/** Values as float32 (for weights, biases and BN parameters of any float or int type). */
export function tensorFloats(t: TensorProto): Float32Array {
  const v = tensorValues(t);
  if (v instanceof Float32Array) return v;
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = Number(v[i]);
  return out;
}

/** Values as numbers (shape tensors, axes): int64 read exactly where it fits in a double. */
export function tensorInts(t: TensorProto): number[] {
  const v = tensorValues(t);
  const out: number[] = new Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = Number(v[i]);
  return out;
}

function dataTypeOf(values: NumericArray): DT {
  if (values instanceof Float32Array) return DT.FLOAT;
  if (values instanceof Float64Array) return DT.DOUBLE;
  if (values instanceof Int8Array) return DT.INT8;
  if (values instanceof Uint8Array) return DT.UINT8;
  if (values instanceof Int16Array) return DT.INT16;
  if (values instanceof Uint16Array) return DT.UINT16;
  if (values instanceof Int32Array) return DT.INT32;
  if (values instanceof Uint32Array) return DT.UINT32;
  if (values instanceof BigInt64Array) return DT.INT64;
  return DT.UINT64;
}

/** Makes a tensor stored as little-endian raw_data (this project only runs on little-endian CPUs). */
export function makeTensor(name: string, values: NumericArray, dims: readonly number[]): TensorProto {
  if (elementCount(dims) !== values.length) {
    throw new Error(`makeTensor ${name}: ${values.length} values do not fill dims [${dims.join(',')}]`);
  }
  const raw = new Uint8Array(values.byteLength);
  raw.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  return create(TensorProtoSchema, {
    name,
    dataType: dataTypeOf(values),
    dims: dims.map((d) => BigInt(d)),
    rawData: raw,
  });
}

export function tensorDims(t: TensorProto): number[] {
  return t.dims.map((d) => Number(d));
}
