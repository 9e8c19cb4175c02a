/**
 * Reading and writing ONNX ModelProto files.
 *
 * The codec is generated from the official onnx.proto (the `onnx-buf` package, built with Buf's
 * protobuf-es): int64 fields are bigints and fields newer than this schema are kept as unknown
 * fields and written back, so read → write loses nothing.
 */
import { closeSync, constants, fsyncSync, openSync, readSync, statSync, writeSync, renameSync, unlinkSync, fstatSync } from 'node:fs';
import { dirname, basename, resolve, isAbsolute, normalize, sep } from 'node:path';
import { clearField, fromBinary, toBinary, create } from '@bufbuild/protobuf';
import { ModelProtoSchema, TensorProto_DataLocation, TensorProtoSchema, StringStringEntryProtoSchema } from 'onnx-buf';
import type { ModelProto, TensorProto, GraphProto } from 'onnx-buf';
import { EdgeqError, fsError } from '../errors.js';

export type { ModelProto, TensorProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto } from 'onnx-buf';

/** Largest model file we read; protobuf itself cannot exceed 2 GiB. */
export const MAX_MODEL_BYTES = 2 ** 31 - 1;

/** Decodes and sanity-checks a serialized ModelProto. `label` names the source in errors. */
export function decodeModel(bytes: Uint8Array, label = 'model'): ModelProto {
  let model: ModelProto;
  try {
    model = fromBinary(ModelProtoSchema, bytes);
  } catch (e) {
    throw new EdgeqError('E_MODEL_INVALID', `${label} is not an ONNX model (protobuf decoding failed: ${(e as Error).message})`, { cause: e });
  }
  // Protobuf decodes many non-ONNX byte strings without error, so check what every model has.
  if (model.irVersion <= 0n || model.irVersion > 100n || !model.graph || model.opsetImport.length === 0) {
    throw new EdgeqError('E_MODEL_INVALID', `${label} is not an ONNX model (no graph, IR version or opset import)`);
  }
  if (model.graph.node.some((n) => n.opType === '')) {
    throw new EdgeqError('E_MODEL_INVALID', `${label} is not a valid ONNX model (a node has no op_type)`);
  }
  checkTensorSizes(model.graph, label);
  return model;
}

/**
 * Refuses tensors whose dims promise more elements than they store. ONNX Runtime's shape
 * inference allocates what a constant's dims say before it checks its data: a 6 KB model with
 * one Constant of dims [2147483648] made session creation take gigabytes (found by fuzzing).
 * The count of stored values is an upper bound (two per byte, for 4-bit types), so a valid
 * tensor always passes. External tensors are measured by `external` (readModel, which knows
 * their directory) and skipped without it.
 */
function checkTensorSizes(graph: GraphProto, label: string, external?: (t: TensorProto) => number): void {
  for (const t of allTensors(graph)) {
    const isExternal = t.dataLocation === TensorProto_DataLocation.EXTERNAL;
    if (isExternal && !external) continue;
    const n = t.dims.reduce((a, d) => a * Number(d), 1);
    const stored = isExternal ? 2 * external!(t)
      : 2 * t.rawData.length + t.floatData.length + t.int32Data.length + t.int64Data.length + t.doubleData.length + t.uint64Data.length + t.stringData.length;
    if (t.dims.some((d) => d < 0n) || !(n <= stored)) {
      const holds = isExternal ? `its external data (${externalEntry(t, 'location') ?? 'no location'}) has ${stored / 2} bytes` : `it holds data for at most ${stored} elements`;
      throw new EdgeqError('E_MODEL_INVALID', `${label} is not a valid ONNX model (tensor ${JSON.stringify(t.name)} has dims [${t.dims.join(', ')}], but ${holds})`);
    }
  }
}

export function encodeModel(model: ModelProto): Uint8Array {
  return toBinary(ModelProtoSchema, model);
}

function readWholeFile(path: string, maxBytes: number): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw fsError(e, path);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new EdgeqError('E_FILE_UNREADABLE', `${path} is a directory, not a file`);
    if (st.size > maxBytes) throw new EdgeqError('E_MODEL_INVALID', `${path} is ${st.size} bytes, over the limit of ${maxBytes}`);
    const buf = new Uint8Array(st.size);
    let off = 0;
    while (off < st.size) {
      const n = readSync(fd, buf, off, st.size - off, off);
      if (n === 0) break;
      off += n;
    }
    return off === st.size ? buf : buf.subarray(0, off);
  } catch (e) {
    if (e instanceof EdgeqError) throw e;
    throw fsError(e, path);
  } finally {
    closeSync(fd);
  }
}

export interface ReadOptions {
  /**
   * 'load' (default) reads external-data tensors into raw_data so the model is self-contained in
   * memory; 'keep' leaves the references as they are (for a byte-faithful round trip in place).
   */
  externalData?: 'load' | 'keep';
  maxBytes?: number;
}

/** Reads an ONNX file. Throws EdgeqError naming the file on any problem. */
export function readModel(path: string, opts: ReadOptions = {}): ModelProto {
  const bytes = readWholeFile(path, opts.maxBytes ?? MAX_MODEL_BYTES);
  if (bytes.length === 0) throw new EdgeqError('E_MODEL_INVALID', `${path} is empty, not an ONNX model`);
  const model = decodeModel(bytes, path);
  const dir = dirname(resolve(path));
  if ((opts.externalData ?? 'load') === 'load') loadExternalData(model, dir);
  // Loaded tensors are inline now; references kept are measured against their files.
  checkTensorSizes(model.graph!, path, (t) => externalBytes(t, dir));
  return model;
}

/** Bytes an external tensor can have: its file's size from its offset, and at most its `length`. 0 if there is no such file. */
function externalBytes(t: TensorProto, dir: string): number {
  const location = externalEntry(t, 'location');
  let size = 0;
  try {
    if (location) size = statSync(resolve(dir, location)).size;
  } catch {
    // missing or unreadable: nothing to read
  }
  const offset = Number(externalEntry(t, 'offset') ?? '0');
  const length = Number(externalEntry(t, 'length') ?? Infinity);
  if (!Number.isSafeInteger(offset) || offset < 0) return 0;
  return Math.max(0, Math.min(size - offset, length >= 0 ? length : 0));
}

/** Every tensor stored in the model: initializers, Constant/attribute tensors, in all subgraphs. */
export function* allTensors(graph: GraphProto): Generator<TensorProto> {
  yield* graph.initializer;
  for (const sp of graph.sparseInitializer) {
    if (sp.values) yield sp.values;
    if (sp.indices) yield sp.indices;
  }
  for (const node of graph.node) {
    for (const a of node.attribute) {
      if (a.t) yield a.t;
      yield* a.tensors;
      if (a.g) yield* allTensors(a.g);
      for (const g of a.graphs) yield* allTensors(g);
    }
  }
}

function externalEntry(t: TensorProto, key: string): string | undefined {
  return t.externalData.find((e) => e.key === key)?.value;
}

/** Replaces external-data references by the bytes they point at (the path must stay under `baseDir`). */
export function loadExternalData(model: ModelProto, baseDir: string): void {
  if (!model.graph) return;
  for (const t of allTensors(model.graph)) {
    if (t.dataLocation !== TensorProto_DataLocation.EXTERNAL) continue;
    const location = externalEntry(t, 'location');
    if (!location) throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name} is external but names no location`);
    // The ONNX spec requires the location to be relative and inside the model's directory.
    const full = resolve(baseDir, location);
    if (isAbsolute(location) || !(full + sep).startsWith(normalize(baseDir + sep)) || full === normalize(baseDir)) {
      throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name}: external data location ${location} leaves the model's directory`);
    }
    const offset = Number(externalEntry(t, 'offset') ?? '0');
    const lengthText = externalEntry(t, 'length');
    let fd: number;
    try {
      // Non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
      fd = openSync(full, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch (e) {
      throw fsError(e, full);
    }
    try {
      // A directory (or any non-file) there would fail in readSync with a bare EISDIR.
      const st = fstatSync(fd);
      if (!st.isFile()) throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name}: external data location ${location} is not a file`);
      const size = st.size;
      const length = lengthText === undefined ? size - offset : Number(lengthText);
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
        throw new EdgeqError('E_MODEL_INVALID', `tensor ${t.name}: external data range ${offset}+${length} is outside ${location} (${size} bytes)`);
      }
      const buf = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, buf, done, length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      t.rawData = buf;
    } finally {
      closeSync(fd);
    }
    markInline(t);
  }
}

/**
 * Makes a tensor inline again. data_location is a proto2 field: assigning DEFAULT would mark it
 * present and add bytes to every later encoding, so it is cleared instead.
 */
function markInline(t: TensorProto): void {
  clearField(t, TensorProtoSchema.field.dataLocation);
  t.externalData = [];
}

export interface WriteOptions {
  /**
   * Store tensors of at least this many bytes in a side file `<name>.data` next to the model
   * (the ONNX external-data format). Needed for models over protobuf's 2 GiB limit.
   */
  externalDataThresholdBytes?: number;
}

/** Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename. */
export function writeFileAtomic(path: string, chunks: Uint8Array | Uint8Array[]): void {
  const tmp = `${path}.${process.pid}.tmp`;
  let fd: number;
  try {
    fd = openSync(tmp, 'w', 0o644);
  } catch (e) {
    throw fsError(e, path, true);
  }
  try {
    for (const c of Array.isArray(chunks) ? chunks : [chunks]) {
      let off = 0;
      while (off < c.length) off += writeSync(fd, c, off, c.length - off);
    }
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    try { closeSync(fd); } catch { /* already closed */ }
    try { unlinkSync(tmp); } catch { /* never created or already gone */ }
    throw fsError(e, path, true);
  }
}

/** Writes a model. Returns the size in bytes of what was written (model plus side file). */
export function writeModel(model: ModelProto, path: string, opts: WriteOptions = {}): number {
  const threshold = opts.externalDataThresholdBytes;
  if (threshold === undefined || !model.graph) {
    const bytes = encodeModel(model);
    writeFileAtomic(path, bytes);
    return bytes.length;
  }
  const dataName = `${basename(path)}.data`;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const moved: Array<[TensorProto, Uint8Array<ArrayBuffer>]> = [];
  for (const t of allTensors(model.graph)) {
    if (t.dataLocation === TensorProto_DataLocation.EXTERNAL || t.rawData.length < threshold) continue;
    // Keep offsets 4 KiB-aligned, as ONNX's own writer does, so the side file can be mmapped.
    const pad = (4096 - (offset % 4096)) % 4096;
    if (pad) chunks.push(new Uint8Array(pad));
    offset += pad;
    moved.push([t, t.rawData]);
    chunks.push(t.rawData);
    t.externalData = [
      create(StringStringEntryProtoSchema, { key: 'location', value: dataName }),
      create(StringStringEntryProtoSchema, { key: 'offset', value: String(offset) }),
      create(StringStringEntryProtoSchema, { key: 'length', value: String(t.rawData.length) }),
    ];
    t.dataLocation = TensorProto_DataLocation.EXTERNAL;
    t.rawData = new Uint8Array(0);
    offset += moved[moved.length - 1][1].length;
  }
  try {
    if (moved.length) writeFileAtomic(`${dirname(path)}/${dataName}`, chunks);
    const bytes = encodeModel(model);
    writeFileAtomic(path, bytes);
    return bytes.length + offset;
  } finally {
    // The in-memory model stays self-contained whatever was written.
    for (const [t, raw] of moved) {
      t.rawData = raw as Uint8Array<ArrayBuffer>;
      markInline(t);
    }
  }
}
