/**
 * NumPy .npy files: the tensor format of the CLI. Reading is streamed — a file is opened once
 * and read a batch of samples at a time — so calibration memory does not grow with the file.
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { EdgeqError, fsError } from './errors.js';
import { writeFileAtomic } from './onnx/model.js';

export type NpyDtype = 'float32' | 'float64' | 'uint8' | 'int8' | 'int32' | 'int64';

const DESCR: Record<string, NpyDtype> = {
  '<f4': 'float32', '<f8': 'float64', '|u1': 'uint8', '<u1': 'uint8', '|i1': 'int8', '<i1': 'int8', '<i4': 'int32', '<i8': 'int64',
};
const DESCR_OF: Record<NpyDtype, string> = { float32: '<f4', float64: '<f8', uint8: '|u1', int8: '|i1', int32: '<i4', int64: '<i8' };
export const ITEM_SIZE: Record<NpyDtype, number> = { float32: 4, float64: 8, uint8: 1, int8: 1, int32: 4, int64: 8 };

export type NpyArray = Float32Array | Float64Array | Uint8Array | Int8Array | Int32Array | BigInt64Array;

function view(dtype: NpyDtype, buf: ArrayBuffer, n: number): NpyArray {
  switch (dtype) {
    case 'float32': return new Float32Array(buf, 0, n);
    case 'float64': return new Float64Array(buf, 0, n);
    case 'uint8': return new Uint8Array(buf, 0, n);
    case 'int8': return new Int8Array(buf, 0, n);
    case 'int32': return new Int32Array(buf, 0, n);
    case 'int64': return new BigInt64Array(buf, 0, n);
  }
}

const MAX_HEADER = 1 << 16;

const npyInvalid = (what: string, why: string) => new EdgeqError('E_NPY_INVALID', `${what} is not a valid .npy file: ${why}`);

/**
 * The header of .npy bytes (format 1, 2 or 3): dtype, shape and where the data starts. `what`
 * names the source in errors; `head` need hold only the header.
 */
function parseHeader(head: Buffer, what: string): { dtype: NpyDtype; shape: number[]; dataOffset: number } {
  const bad = (why: string) => npyInvalid(what, why);
  if (head.length < 10 || head.readUInt8(0) !== 0x93 || head.toString('latin1', 1, 6) !== 'NUMPY') throw bad('no NUMPY magic');
  const major = head.readUInt8(6);
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = head.readUInt16LE(8);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (head.length < 12) throw bad('truncated header');
    headerLen = head.readUInt32LE(8);
    start = 12;
  } else throw bad(`unknown format version ${major}`);
  if (headerLen > MAX_HEADER || start + headerLen > head.length) throw bad('truncated or oversized header');
  const header = head.toString(major === 3 ? 'utf8' : 'latin1', start, start + headerLen);
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) throw bad('header lacks descr, fortran_order or shape');
  const dtype = DESCR[descr];
  if (!dtype) throw new EdgeqError('E_DTYPE_MISMATCH', `${what}: dtype ${descr} is not supported (use float32, float64, uint8, int8, int32 or int64, little-endian)`);
  if (fortran === 'True') throw new EdgeqError('E_NPY_INVALID', `${what}: Fortran-ordered arrays are not supported; save it in C order (np.ascontiguousarray)`);
  const shape = shapeText.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  if (shape.some((d) => !Number.isSafeInteger(d) || d < 0)) throw bad(`bad shape (${shapeText})`);
  return { dtype, shape, dataOffset: start + headerLen };
}

/** An open .npy file whose leading axis counts samples. Call close() when done. */
export class NpyFile {
  readonly dtype: NpyDtype;
  /** Full shape, leading axis first. */
  readonly shape: number[];
  /** Number of samples (shape[0]). */
  readonly count: number;
  /** Elements in one sample (product of shape[1:]). */
  readonly sampleSize: number;
  private fd: number;
  private dataOffset: number;

  private constructor(readonly path: string, fd: number, dtype: NpyDtype, shape: number[], dataOffset: number) {
    this.fd = fd;
    this.dtype = dtype;
    this.shape = shape;
    this.dataOffset = dataOffset;
    this.count = shape.length ? shape[0] : 1;
    this.sampleSize = shape.slice(1).reduce((a, b) => a * b, 1);
  }

  static open(path: string): NpyFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw fsError(e, path);
    }
    try {
      const st = fstatSync(fd);
      if (st.isDirectory()) throw new EdgeqError('E_FILE_UNREADABLE', `${path} is a directory, not a .npy file`);
      const head = Buffer.alloc(Math.min(st.size, MAX_HEADER + 12));
      readSync(fd, head, 0, head.length, 0);
      const { dtype, shape, dataOffset } = parseHeader(head, path);
      const elements = shape.reduce((a, b) => a * b, 1);
      const expected = dataOffset + elements * ITEM_SIZE[dtype];
      if (st.size < expected) throw npyInvalid(path, `truncated: shape (${shape.join(', ')}) needs ${expected} bytes, the file has ${st.size}`);
      return new NpyFile(path, fd, dtype, shape, dataOffset);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Reads samples [start, start+n) as one typed array, C order. */
  read(start: number, n: number): NpyArray {
    if (start < 0 || n < 0 || start + n > this.count) throw new RangeError(`samples ${start}..${start + n} outside 0..${this.count}`);
    const bytes = n * this.sampleSize * ITEM_SIZE[this.dtype];
    const buf = new ArrayBuffer(bytes);
    const u8 = new Uint8Array(buf);
    let off = 0;
    const pos = this.dataOffset + start * this.sampleSize * ITEM_SIZE[this.dtype];
    while (off < bytes) {
      const got = readSync(this.fd, u8, off, bytes - off, pos + off);
      if (got === 0) throw new EdgeqError('E_NPY_INVALID', `${this.path}: file ended early`);
      off += got;
    }
    return view(this.dtype, buf, n * this.sampleSize);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Reads a whole .npy file (for small arrays such as labels). */
export function readNpy(path: string): { dtype: NpyDtype; shape: number[]; data: NpyArray } {
  const f = NpyFile.open(path);
  try {
    return { dtype: f.dtype, shape: f.shape, data: f.read(0, f.count) };
  } finally {
    f.close();
  }
}

function dtypeOf(data: NpyArray): NpyDtype {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof Uint8Array) return 'uint8';
  if (data instanceof Int8Array) return 'int8';
  if (data instanceof Int32Array) return 'int32';
  return 'int64';
}

/** The .npy (format 1.0) header for a C-order array, padded so the data starts on 64 bytes. */
export function npyHeader(dtype: NpyDtype, shape: readonly number[]): Uint8Array {
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${DESCR_OF[dtype]}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const out = new Uint8Array(10 + header.length);
  out.set([0x93, ...Buffer.from('NUMPY', 'latin1'), 1, 0], 0);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(Buffer.from(header, 'latin1'), 10);
  return out;
}

/** Encodes an array as .npy (format 1.0) bytes. */
export function encodeNpy(data: NpyArray, shape: readonly number[]): Uint8Array {
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== data.length) throw new Error(`encodeNpy: ${data.length} values do not fill shape (${shape.join(', ')})`);
  const header = npyHeader(dtypeOf(data), shape);
  const out = new Uint8Array(header.length + data.byteLength);
  out.set(header, 0);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), header.length);
  return out;
}

/**
 * Writes a .npy file a sample at a time (the sample count is known up front), to a temporary
 * name that close() fsyncs and renames into place; abort() removes it.
 */
export class NpyWriter {
  private fd: number;
  private written = 0;
  private readonly tmp: string;
  private readonly expected: number;

  constructor(readonly path: string, readonly dtype: NpyDtype, readonly shape: readonly number[]) {
    this.tmp = `${path}.${process.pid}.tmp`;
    this.expected = shape.reduce((a, b) => a * b, 1) * ITEM_SIZE[dtype];
    try {
      this.fd = openSync(this.tmp, 'w', 0o644);
    } catch (e) {
      throw fsError(e, path, true);
    }
    this.put(npyHeader(dtype, shape));
    this.written = 0;
  }

  private put(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) off += writeSync(this.fd, bytes, off, bytes.length - off);
  }

  append(bytes: Uint8Array): void {
    if (this.written + bytes.length > this.expected) throw new Error(`NpyWriter: more data than shape (${this.shape.join(', ')}) holds`);
    this.put(bytes);
    this.written += bytes.length;
  }

  close(): void {
    if (this.written !== this.expected) {
      this.abort();
      throw new Error(`NpyWriter: ${this.written} of ${this.expected} bytes written for shape (${this.shape.join(', ')})`);
    }
    fsyncSync(this.fd);
    closeSync(this.fd);
    renameSync(this.tmp, this.path);
  }

  abort(): void {
    try { closeSync(this.fd); } catch { /* closed */ }
    try { unlinkSync(this.tmp); } catch { /* gone */ }
  }
}

export function writeNpy(path: string, data: NpyArray, shape: readonly number[]): void {
  writeFileAtomic(path, encodeNpy(data, shape));
}

/**
 * Parses a whole .npy file held in memory (an HTTP body, say). `what` names the source in errors.
 * The data is copied into its own buffer, so the typed array is aligned whatever the offset.
 * Unlike a file on disk, bytes after the array's data are an error.
 */
export function parseNpy(bytes: Uint8Array, what = 'the data'): { dtype: NpyDtype; shape: number[]; data: NpyArray } {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const { dtype, shape, dataOffset } = parseHeader(head, what);
  const elements = shape.reduce((a, b) => a * b, 1);
  const expected = dataOffset + elements * ITEM_SIZE[dtype];
  if (head.length < expected) throw npyInvalid(what, `truncated: shape (${shape.join(', ')}) needs ${expected} bytes, there are ${head.length}`);
  if (head.length > expected) throw npyInvalid(what, `${head.length - expected} bytes follow the data of shape (${shape.join(', ')})`);
  const buf = new ArrayBuffer(elements * ITEM_SIZE[dtype]);
  new Uint8Array(buf).set(bytes.subarray(dataOffset, expected));
  return { dtype, shape, data: view(dtype, buf, elements) };
}
