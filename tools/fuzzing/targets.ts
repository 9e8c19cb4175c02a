/**
 * The fuzz targets: every parser that takes outside input, with its inputs and the property a
 * case checks. The property tests (test/fuzz/*.test.ts) and the long runner (tools/fuzz.ts) both
 * use these definitions; docs/fuzzing.md describes them.
 */
import { spawnSync } from 'node:child_process';
import { createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { isAbsolute, join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { GraphProtoSchema, ModelProtoSchema, OperatorSetIdProtoSchema, TensorProto_DataLocation } from 'onnx-buf';
import type { NodeProto, ValueInfoProto } from 'onnx-buf';
import fc from 'fast-check';
import { readJsonFile } from '../../agent/json-file.js';
import { COMMAND_ARGS, COMMAND_TYPES, CommandSchema, DEFAULT_MAX_COMMAND_BYTES, DEFAULT_PREFIX, DEVICE_ID, parseCommand, parseReply, parseReportPayload, parseStatus, parseTopic, ReplySchema, StatusSchema } from '../../agent/protocol/messages.js';
import { ReportSchema } from '../../agent/protocol/report.js';
import { startServer, type RunningServer } from '../../agent/serve/server.js';
import { staticModels } from '../../agent/serve/static-models.js';
import { checkShape, decodeJsonBody, decodeNpyBody, DEFAULT_MAX_ELEMENTS, type DecodedInput, type InputSpec } from '../../agent/serve/tensors.js';
import { artifactSource, parseManifest, type Manifest } from '../../deploy/manifest.js';
import { canonicalBytes, checkSignature } from '../../deploy/signature.js';
import { modelSizeBytes } from '../../quant/bench-process.js';
import { withExtraOutputs } from '../../quant/calibrate.js';
import type { ErrorCode } from '../../quant/errors.js';
import { ITEM_SIZE, parseNpy, readNpy, type NpyArray, type NpyDtype } from '../../quant/npy.js';
import { makeNode, onnxOpset } from '../../quant/onnx/graph.js';
import { allTensors, encodeModel, readModel, writeModel } from '../../quant/onnx/model.js';
import { DT } from '../../quant/onnx/tensor.js';
import { foldConstantNodes, foldInitializerIdentities } from '../../quant/passes/constants.js';
import { foldBatchNorm } from '../../quant/passes/fold-bn.js';
import { candidateTensors } from '../../quant/qdq/plan.js';
import { openSession } from '../../quant/runtime.js';
import { Finding, invariant, scratchRoot, showJson, tryParse, type AnyTarget, type FuzzTarget } from './core.js';
import { anyJson, fromSchema, jsonText, mutateText, objectOf, rarely, textMutation, type TextMutation } from './gen.js';
import { describeRecipe, onnxCase, onnxLightCase, ROOT, valueInfo, type OnnxCase } from './onnx-cases.js';
import { bodyCase, bodyCaseFor, npyCase, type BodyCase, type NpyCase } from './tensor-cases.js';

const utf8 = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));

/** A scratch directory for targets that parse files (see scratchRoot). */
function sandbox(prefix: string): string {
  return mkdtempSync(join(scratchRoot(), prefix));
}

// ---------------------------------------------------------------------------------------------
// ONNX models

const ONNX_CODES: ErrorCode[] = ['E_MODEL_INVALID', 'E_MODEL_UNSUPPORTED', 'E_FILE_NOT_FOUND', 'E_FILE_UNREADABLE'];

interface OnnxSandbox {
  dir: string;
  model: string;
}

/**
 * A directory holding model.onnx, a data file, a sub-directory and (where mkfifo exists) a FIFO
 * named `pipe`, for external-data references to point at.
 */
function onnxSandbox(): OnnxSandbox {
  const dir = sandbox('edgeq-fuzz-onnx-');
  writeFileSync(join(dir, 'weights.bin'), new Uint8Array(4096).map((_, i) => i & 0xff));
  mkdirSync(join(dir, 'sub'));
  writeFileSync(join(dir, 'sub', 'inner.bin'), new Uint8Array(64));
  spawnSync('mkfifo', [join(dir, 'pipe')]);
  return { dir, model: join(dir, 'model.onnx') };
}

/**
 * What edgeq does with a model file before ONNX Runtime sees it: quantize's prepareModel
 * (quant/pipeline.ts: read with external data, opset check, node names, the folding passes, the
 * calibration graph), and the checks of registerModel (agent/models.ts), `edgeq serve --model`
 * (modelFromSpec) and bench's modelSizeBytes: read keeping external references, walk every tensor.
 */
export const onnxTarget: FuzzTarget<OnnxCase, OnnxSandbox> = {
  name: 'onnx',
  title: 'ONNX model files: decoding, external data, and the passes quantize runs before ONNX Runtime',
  entryPoints: [
    'quant/onnx/model.ts readModel (decodeModel, loadExternalData)',
    'quant/onnx/graph.ts onnxOpset',
    'quant/passes/constants.ts foldConstantNodes, foldInitializerIdentities',
    'quant/passes/fold-bn.ts foldBatchNorm (quant/onnx/tensor.ts tensorValues)',
    'quant/qdq/plan.ts candidateTensors, quant/calibrate.ts withExtraOutputs',
    'agent/models.ts registerModel\'s external-data check (readModel keep + allTensors)',
    'quant/bench-process.ts modelSizeBytes',
  ],
  checks: 'a read model has a graph and an opset import; every external tensor loaded is inline afterwards; modelSizeBytes is at least the file\'s size',
  codes: ONNX_CODES,
  testRuns: 150,
  arbitrary: () => onnxCase,
  setup: onnxSandbox,
  teardown: (s) => rmSync(s.dir, { recursive: true, force: true }),
  run(c, s) {
    writeFileSync(s.model, c.bytes);
    // quantize: prepareModel up to inferTensorTypes (the first ONNX Runtime call).
    tryParse(ONNX_CODES, () => {
      const model = readModel(s.model);
      const graph = model.graph;
      invariant(graph && model.opsetImport.length > 0, 'readModel returned a model without a graph or opset import');
      for (const t of allTensors(graph)) invariant(t.dataLocation !== TensorProto_DataLocation.EXTERNAL, `tensor ${t.name} is still external after loading`);
      if (onnxOpset(model) < 10) return;
      graph.node.forEach((n, i) => {
        if (!n.name) n.name = `${n.opType}_${i}`;
      });
      foldConstantNodes(graph);
      foldInitializerIdentities(graph);
      foldBatchNorm(graph);
      withExtraOutputs(model, candidateTensors(graph));
    });
    // registerModel / modelFromSpec: read keeping external references, then walk every tensor.
    tryParse(ONNX_CODES, () => {
      const model = readModel(s.model, { externalData: 'keep' });
      let external = 0;
      for (const t of allTensors(model.graph!)) if (t.dataLocation === TensorProto_DataLocation.EXTERNAL) external++;
      return external;
    });
    // bench: the model's size with the external files it names.
    const size = tryParse(ONNX_CODES, () => modelSizeBytes(s.model));
    if (size !== undefined) invariant(Number.isSafeInteger(size) && size >= c.bytes.length, `modelSizeBytes gave ${size} for a file of ${c.bytes.length} bytes`);
  },
  size: (c) => c.bytes.length,
  show: (c) => showJson({ recipe: describeRecipe(c.recipe), bytes: c.bytes.length }),
  raw: (c) => c.bytes,
};

interface RuntimeCase {
  model: OnnxCase;
  /** Open by path (external data resolves next to it) or from bytes. */
  byPath: boolean;
  optimization: 'disabled' | 'all';
}

/**
 * Loading into ONNX Runtime (native code): long run only. A crash of the process is a finding
 * the runner sees from outside; the property here only asks for a session or an EdgeqError.
 * Models reach ORT as edgeq hands them over: by path after readModel keeping external references
 * (registerModel, `serve --model`, bench), or as the bytes of a model readModel loaded
 * (quantize's sessions).
 */
export const onnxRuntimeTarget: FuzzTarget<RuntimeCase, OnnxSandbox> = {
  name: 'onnx-runtime',
  title: 'ONNX model files loaded into ONNX Runtime after edgeq\'s own read (native; long run only, in a child process)',
  entryPoints: ['quant/onnx/model.ts readModel, then quant/runtime.ts openSession (onnxruntime-node InferenceSession.create) by path or from bytes'],
  checks: 'a session opens and is released, or an EdgeqError; a native crash, hang or memory blow-up of the process is a finding',
  codes: ONNX_CODES,
  async: true,
  testRuns: 0,
  arbitrary: () => fc.record({ model: onnxLightCase, byPath: fc.boolean(), optimization: fc.constantFrom('disabled' as const, 'all' as const) }),
  setup: onnxSandbox,
  teardown: (s) => rmSync(s.dir, { recursive: true, force: true }),
  async run(c, s) {
    writeFileSync(s.model, c.model.bytes);
    const model = readModel(s.model, { externalData: c.byPath ? 'keep' : 'load' });
    const session = await openSession(c.byPath ? s.model : encodeModel(model), { threads: 1, optimization: c.optimization });
    await session.release();
  },
  size: (c) => c.model.bytes.length,
  show: (c) => showJson({ recipe: describeRecipe(c.model.recipe), bytes: c.model.bytes.length, byPath: c.byPath, optimization: c.optimization }),
  raw: (c) => c.model.bytes,
};

// ---------------------------------------------------------------------------------------------
// .npy

const NPY_CODES: ErrorCode[] = ['E_NPY_INVALID', 'E_DTYPE_MISMATCH'];
const NPY_CTOR: Record<NpyDtype, { BYTES_PER_ELEMENT: number; name: string }> = {
  float32: Float32Array, float64: Float64Array, uint8: Uint8Array, int8: Int8Array, int32: Int32Array, int64: BigInt64Array,
};

function checkNpyValue(v: { dtype: NpyDtype; shape: number[]; data: NpyArray }, what: string): void {
  invariant(v.dtype in ITEM_SIZE, `${what}: unknown dtype ${v.dtype}`);
  invariant(v.shape.every((d) => Number.isSafeInteger(d) && d >= 0), () => `${what}: shape ${JSON.stringify(v.shape)} has a dim that is not a whole number`);
  const n = v.shape.reduce((a, b) => a * b, 1);
  invariant(v.data.length === n, () => `${what}: ${v.data.length} values for shape (${v.shape.join(', ')})`);
  invariant(v.data.constructor.name === NPY_CTOR[v.dtype].name, () => `${what}: a ${v.data.constructor.name} for dtype ${v.dtype}`);
}

export const npyTarget: FuzzTarget<NpyCase, { dir: string; file: string }> = {
  name: 'npy',
  title: '.npy files and bodies: header, dtype, shape, data size',
  entryPoints: ['quant/npy.ts parseNpy (bytes in memory)', 'quant/npy.ts readNpy / NpyFile.open + read (a file)'],
  checks: 'dtype known, shape whole numbers, values = product of the shape, the typed array matches the dtype; bytes parseNpy accepts, readNpy reads the same from a file',
  codes: NPY_CODES,
  testRuns: 1000,
  arbitrary: () => npyCase,
  setup: () => {
    const dir = sandbox('edgeq-fuzz-npy-');
    return { dir, file: join(dir, 'case.npy') };
  },
  teardown: (s) => rmSync(s.dir, { recursive: true, force: true }),
  run(c, s) {
    const mem = tryParse(NPY_CODES, () => parseNpy(c.bytes, 'the case'));
    if (mem) checkNpyValue(mem, 'parseNpy');
    writeFileSync(s.file, c.bytes);
    const file = tryParse(NPY_CODES, () => readNpy(s.file));
    if (file) checkNpyValue(file, 'readNpy');
    if (mem) {
      invariant(file, 'parseNpy accepts bytes that readNpy refuses');
      invariant(file.dtype === mem.dtype && file.shape.join() === mem.shape.join(), () => `parseNpy and readNpy disagree: ${mem.dtype} (${mem.shape}) vs ${file.dtype} (${file.shape})`);
      invariant(Buffer.compare(Buffer.from(file.data.buffer, file.data.byteOffset, file.data.byteLength), Buffer.from(mem.data.buffer, mem.data.byteOffset, mem.data.byteLength)) === 0, 'parseNpy and readNpy read different data');
    }
  },
  size: (c) => c.bytes.length,
  show: (c) => showJson(c),
  raw: (c) => c.bytes,
};

// ---------------------------------------------------------------------------------------------
// MQTT: commands to the device, and status / reply / report messages to the fleet controller

const PARSE_COMMAND_CODES = ['E_PAYLOAD_TOO_LARGE', 'E_BAD_JSON', 'E_COMMAND_INVALID', 'E_COMMAND_UNKNOWN'];

export interface CommandCase {
  kind: 'command' | 'raw' | 'deep' | 'large';
  value?: unknown;
  mutations?: TextMutation[];
  payload: string | Uint8Array;
  /** Passed as parseCommand's maxBytes (the daemon's config); undefined: the default. */
  maxBytes?: number;
}

const commandId = fc.oneof(
  { arbitrary: fc.stringMatching(/^[\x21-\x7e]{1,128}$/), weight: 6 },
  { arbitrary: fc.constantFrom<unknown>('', 'a b', 'x'.repeat(129), 'é', 1, null), weight: 1 },
);

export const commandTarget: FuzzTarget<CommandCase, null> = {
  name: 'mqtt-command',
  title: 'MQTT command payloads (fleet → device): size, JSON, envelope, per-type arguments, a deploy\'s manifest',
  entryPoints: ['agent/protocol/messages.ts parseCommand (CommandSchema, COMMAND_ARGS)', 'deploy/manifest.ts parseManifest on a deploy command\'s manifest (agent/daemon/jobs.ts)'],
  checks: 'parseCommand never throws; ok → a known type with arguments its schema accepts; not ok → one of its four codes and a message; a deploy manifest parses or E_MANIFEST_INVALID',
  codes: ['E_MANIFEST_INVALID'],
  testRuns: 1000,
  arbitrary: () => commandCase,
  setup: () => null,
  run(c) {
    let r: ReturnType<typeof parseCommand>;
    try {
      r = parseCommand(c.payload, c.maxBytes);
    } catch (e) {
      throw new Finding('exception', `parseCommand threw (it returns its errors): ${(e as Error)?.stack ?? String(e)}`, { cause: e });
    }
    if (!r.ok) {
      invariant(PARSE_COMMAND_CODES.includes(r.code), `parseCommand gave code ${r.code}`);
      invariant(typeof r.error === 'string' && r.error.length > 0, 'parseCommand gave an empty error');
      invariant(r.id === undefined || (typeof r.id === 'string' && r.id.length <= 128), 'parseCommand gave an id over 128 characters');
      return;
    }
    const { id, type, args } = r.value;
    invariant((COMMAND_TYPES as string[]).includes(type), `parseCommand accepted type ${type}`);
    invariant(CommandSchema.safeParse({ id, type }).success, `parseCommand accepted id ${JSON.stringify(id)}`);
    invariant(COMMAND_ARGS[type].safeParse(args).success, `parseCommand's ${type} arguments do not pass their own schema`);
    if (type === 'deploy') {
      const m = parseManifest((args as { manifest: unknown }).manifest, 'the deploy command\'s manifest');
      checkManifest(m);
    }
  },
  size: (c) => (typeof c.payload === 'string' ? Buffer.byteLength(c.payload) : c.payload.length),
  show: (c) => showJson(c.kind === 'command' ? { kind: c.kind, maxBytes: c.maxBytes, payload: c.payload } : c, 512),
  raw: (c) => (typeof c.payload === 'string' ? utf8(c.payload) : c.payload),
};

export interface FleetCase {
  channel: 'status' | 'reply' | 'report';
  topic: string;
  value: unknown;
  mutations: TextMutation[];
  payload: string | Uint8Array;
}

const deviceId = fc.oneof({ arbitrary: fc.stringMatching(DEVICE_ID), weight: 6 }, { arbitrary: fc.constantFrom('', '+', '#', 'a/b', 'x'.repeat(129), '$SYS', '.a'), weight: 1 });

export const fleetTarget: FuzzTarget<FleetCase, null> = {
  name: 'mqtt-fleet',
  title: 'MQTT device messages (device → fleet controller): topic, status, reply, run report',
  entryPoints: ['agent/protocol/messages.ts parseTopic, parseStatus, parseReply, parseReportPayload (fleet/controller.ts handle)'],
  checks: 'none of them throws; parseTopic gives undefined or a valid device id and channel; each parser gives {ok: true, value} or {ok: false, error}',
  codes: [],
  testRuns: 500,
  arbitrary: () => fleetCase,
  setup: () => null,
  run(c) {
    const where = parseTopic(DEFAULT_PREFIX, c.topic);
    if (where) {
      invariant(DEVICE_ID.test(where.deviceId), `parseTopic gave device id ${JSON.stringify(where.deviceId)}`);
      invariant(['status', 'cmd', 'reply', 'report'].includes(where.channel), `parseTopic gave channel ${where.channel}`);
    }
    for (const [name, parse] of [['parseStatus', parseStatus], ['parseReply', parseReply], ['parseReportPayload', parseReportPayload]] as const) {
      const p = (parse as (x: string | Uint8Array) => { ok: boolean; value?: unknown; error?: string })(c.payload);
      if (p.ok) invariant(typeof p.value === 'object' && p.value !== null, `${name} gave ok with a non-object`);
      else invariant(typeof p.error === 'string', `${name} gave no error message`);
    }
    // What the controller reads next from a parsed report.
    const r = parseReportPayload(c.payload);
    if (r.ok) invariant(r.value.device.id === undefined || typeof r.value.device.id === 'string', 'report device.id is not a string');
  },
  size: (c) => (typeof c.payload === 'string' ? Buffer.byteLength(c.payload) : c.payload.length),
  show: (c) => showJson({ channel: c.channel, topic: c.topic, payload: c.payload }, 512),
  raw: (c) => (typeof c.payload === 'string' ? utf8(c.payload) : c.payload),
};

// ---------------------------------------------------------------------------------------------
// the endpoint's request bodies

const BODY_CODES: ErrorCode[] = ['E_BAD_JSON', 'E_INPUT_INVALID', 'E_INPUT_UNKNOWN', 'E_INPUT_MISSING', 'E_SHAPE_MISMATCH', 'E_DTYPE_MISMATCH', 'E_NPY_INVALID', 'E_MODEL_UNSUPPORTED', 'E_TENSOR_TOO_LARGE'];
const INPUT_CTOR: Record<string, string> = {
  float32: 'Float32Array', float64: 'Float64Array', int8: 'Int8Array', uint8: 'Uint8Array', int16: 'Int16Array', uint16: 'Uint16Array', int32: 'Int32Array', uint32: 'Uint32Array', int64: 'BigInt64Array', uint64: 'BigUint64Array', bool: 'Uint8Array',
};

/** What ONNX Runtime may be handed: one tensor per spec, of its dtype and a shape it accepts, values filling the shape. */
function checkDecoded(out: DecodedInput[], specs: InputSpec[], maxElements: number): void {
  invariant(out.length === specs.length, `${out.length} decoded inputs for ${specs.length} specs`);
  out.forEach((d, i) => {
    const spec = specs[i];
    invariant(d.name === spec.name && d.dtype === spec.type, () => `input ${i} decoded as ${d.name}/${d.dtype}, the spec is ${spec.name}/${spec.type}`);
    invariant(d.shape.every((x) => Number.isSafeInteger(x) && x > 0), () => `input ${d.name}: shape ${JSON.stringify(d.shape)}`);
    invariant(d.data.length === d.shape.reduce((a, b) => a * b, 1), () => `input ${d.name}: ${d.data.length} values for shape ${JSON.stringify(d.shape)}`);
    invariant(d.data.constructor.name === INPUT_CTOR[d.dtype], () => `input ${d.name}: a ${d.data.constructor.name} for ${d.dtype}`);
    invariant(d.data.length <= maxElements, () => `input ${d.name}: ${d.data.length} elements, over maxElements ${maxElements}`);
    checkShape(spec, d.shape);
  });
  // A dim name the model uses twice (the batch "N" of two inputs) is one size.
  const sizes = new Map<string, number>();
  out.forEach((d, i) => specs[i].shape.forEach((dim, k) => {
    if (typeof dim !== 'string' || dim === '') return;
    const seen = sizes.get(dim);
    invariant(seen === undefined || seen === d.shape[k], () => `dim ${dim} is ${seen} in one input and ${d.shape[k]} in ${d.name}`);
    sizes.set(dim, d.shape[k]);
  }));
}

export interface BodyTargetCase {
  body: BodyCase;
  /** The server's serve.maxElements; undefined: the default. */
  maxElements?: number;
}

export const bodyTarget: FuzzTarget<BodyTargetCase, null> = {
  name: 'http-body',
  title: 'the inference endpoint\'s request bodies (JSON and .npy) against a model\'s input specs',
  entryPoints: ['agent/serve/tensors.ts decodeJsonBody, decodeNpyBody'],
  checks: 'one decoded tensor per input, of the spec\'s dtype, a shape checkShape accepts with every dim positive, as many values as the shape holds and no more than maxElements, dims of one name agreeing across inputs',
  codes: BODY_CODES,
  testRuns: 1000,
  arbitrary: () => fc.record({ body: bodyCase, maxElements: rarely(fc.constantFrom(1, 4, 16, 784), 4) }, { requiredKeys: ['body'] }),
  setup: () => null,
  run({ body: c, maxElements }) {
    const body = Buffer.from(c.body.buffer, c.body.byteOffset, c.body.byteLength);
    const npy = c.kind === 'npy' || (c.kind === 'raw' && c.npy);
    const out = npy ? decodeNpyBody(body, c.specs, maxElements) : decodeJsonBody(body, c.specs, maxElements);
    checkDecoded(out, c.specs, maxElements ?? DEFAULT_MAX_ELEMENTS);
  },
  size: (c) => c.body.body.length,
  show: ({ body: c, maxElements }) => showJson({ kind: c.kind, specs: c.specs, maxElements, body: c.kind === 'json' ? Buffer.from(c.body).toString('utf8') : c.body }, 512),
  raw: (c) => c.body.body,
};

// ---------------------------------------------------------------------------------------------
// deploy manifests and their signatures

/** Fixed Ed25519 keys (from 32-byte seeds): `signer` signs, `other` signs nothing here. */
function ed25519(seedByte: number): { priv: KeyObject; pub: KeyObject } {
  const der = Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.alloc(32, seedByte)]);
  const priv = createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  return { priv, pub: createPublicKey(priv) };
}

let keys: { signer: { priv: KeyObject; pub: KeyObject }; other: { priv: KeyObject; pub: KeyObject } } | undefined;
function fuzzKeys() {
  keys ??= { signer: ed25519(7), other: ed25519(9) };
  return keys;
}

const MANIFEST_URLS = ['https://models.example/fmnist-1.4.0.onnx', 'http://127.0.0.1:8080/m.onnx', 'HTTPS://X/Y', 'file:///tmp/m.onnx', 'm.onnx', './sub/m.onnx', '/abs/m.onnx', '../m.onnx', 'http://[::1]:80/m'];
const ODD_URLS = [
  'file://host/m.onnx', 'file:///%00', 'file:///a%2fb', 'ftp://x/m', 'http://user:pw@host/m', 'http://user@host/m', 'http://[::1', 'https://', 'javascript:alert(1)', 'data:,x', 'http://%zz/', 'http://a b/',
  '\\\\server\\share', 'C:\\m.onnx', 'file:', 'http:/x', 'HtTp://x/\u0000', 'https://x/%',
];

export interface ManifestValue {
  value: unknown;
  /** Signed over its canonical bytes by the signer key, and those fields and the signature not changed since. */
  intact: boolean;
}

const manifestFields = fc.record(
  {
    name: fc.oneof({ arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/), weight: 16 }, { arbitrary: fc.constantFrom<unknown>('', '.x', 'a/b', 'x'.repeat(65), 7, null), weight: 1 }),
    version: fc.oneof(
      { arbitrary: fc.integer({ min: 1, max: 10 ** 6 }), weight: 8 },
      { arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$/), weight: 8 },
      { arbitrary: fc.constantFrom<unknown>(0, -1, 1.5, 2 ** 53, '', 'v 1', '-1', 'x'.repeat(65), null, [1]), weight: 1 },
    ),
    url: fc.oneof({ arbitrary: fc.constantFrom(...MANIFEST_URLS), weight: 8 }, { arbitrary: fc.webUrl({ withQueryParameters: true, withFragments: true }), weight: 6 }, { arbitrary: fc.constantFrom(...ODD_URLS), weight: 2 }, { arbitrary: fc.string({ maxLength: 12 }), weight: 1 }),
    sha256: fc.oneof(
      { arbitrary: fc.stringMatching(/^[0-9a-f]{64}$/), weight: 12 },
      { arbitrary: fc.stringMatching(/^[0-9A-Fa-f]{64}$/), weight: 1 },
      { arbitrary: fc.constantFrom<unknown>('', 'a'.repeat(63), 'g'.repeat(64), 'a'.repeat(65), 1), weight: 1 },
    ),
    size: fc.oneof({ arbitrary: fc.integer({ min: 1, max: 2 ** 31 }), weight: 12 }, { arbitrary: fc.constantFrom<unknown>(0, -1, 1.5, 2 ** 53, '5', null, 1e300), weight: 1 }),
    signature: fc.oneof(
      { arbitrary: fc.constant<unknown>('SIGN'), weight: 8 },
      { arbitrary: fc.uint8Array({ minLength: 0, maxLength: 80, size: 'max' }).map((b) => Buffer.from(b).toString('base64')), weight: 1 },
      { arbitrary: fc.constantFrom<unknown>('', 'not base64!', '====', 'AA==', 'A', 5), weight: 1 },
    ),
    kind: fc.oneof({ arbitrary: fc.constantFrom<unknown>('fp32', 'int8'), weight: 6 }, { arbitrary: fc.constantFrom<unknown>('INT8', '', 1, null), weight: 1 }),
  },
  // A missing required field is one of the defects withDefect makes.
  { requiredKeys: ['name', 'version', 'url', 'sha256', 'size'] },
);

/** What a manifest field may be changed to after signing. */
const tamper = rarely(fc.tuple(fc.constantFrom('name', 'version', 'url', 'sha256', 'size', 'signature', 'kind'), fc.constantFrom<unknown>('fmnist', 2, '2', 'https://evil.example/m.onnx', 'b'.repeat(64), 'B'.repeat(64), 1000, 'AAAA', 'int8')), 3);

export const manifestValue: fc.Arbitrary<ManifestValue> = fc.oneof(
  {
    arbitrary: fc.tuple(manifestFields, rarely(fc.tuple(fc.constantFrom('extra', '__proto__', 'constructor', 'Name'), anyJson), 10), tamper, rarely(fc.constantFrom('name', 'version', 'url', 'sha256', 'size'), 10)).map(([fields, extra, change, drop]) => {
      const m: Record<string, unknown> = objectOf(Object.entries(fields).filter(([k]) => k !== drop));
      /** The canonical bytes of `m` without its signature, or undefined if it does not parse. */
      const canonical = (): Buffer | undefined => {
        const { signature: _s, ...unsigned } = m;
        try {
          return canonicalBytes(parseManifest(unsigned));
        } catch {
          return undefined;
        }
      };
      let signed: Buffer | undefined;
      if (m.signature === 'SIGN') {
        signed = canonical();
        m.signature = signed ? sign(null, signed, fuzzKeys().signer.priv).toString('base64') : 'AAAA';
      }
      const signature = m.signature;
      if (change) m[change[0]] = change[1];
      // Intact: the signature and the signed bytes are what they were (a version 2 changed to
      // "2", or a sha256 to upper case, leaves the canonical bytes as they were).
      const now = signed && m.signature === signature ? canonical() : undefined;
      const intact = signed !== undefined && now !== undefined && now.equals(signed);
      // An unknown key makes the manifest invalid, signed or not.
      return { value: extra ? objectOf([...Object.entries(m), extra]) : m, intact: intact && !extra };
    }),
    weight: 8,
  },
  { arbitrary: anyJson.map((value) => ({ value, intact: false })), weight: 1 },
);

export interface ManifestCase {
  manifest: ManifestValue;
  /** The manifest file's text (the JSON of the value, maybe mutated). */
  mutations: TextMutation[];
  text: string;
  keys: 'none' | 'signer' | 'other' | 'both';
  required: boolean;
}

const MANIFEST_CODES: ErrorCode[] = ['E_MANIFEST_INVALID'];
const SIGNATURE_CODES: ErrorCode[] = ['E_SIGNATURE_INVALID', 'E_SIGNATURE_REQUIRED', 'E_CONFIG_INVALID'];

function checkManifest(m: Manifest): void {
  invariant(typeof m.name === 'string' && typeof m.version === 'string' && typeof m.url === 'string' && typeof m.sha256 === 'string', 'a manifest field is not a string');
  invariant(/^[0-9a-f]{64}$/.test(m.sha256), `sha256 ${m.sha256} is not lower-case hex`);
  invariant(Number.isSafeInteger(m.size) && m.size > 0, `size ${m.size}`);
  // Parsing what parseManifest gives is the identity: what is signed is stable.
  const again = parseManifest(m);
  invariant(JSON.stringify(again) === JSON.stringify(m), () => `parseManifest is not idempotent: ${JSON.stringify(m)} → ${JSON.stringify(again)}`);
  const canon = JSON.parse(canonicalBytes(m).toString('utf8')) as Record<string, unknown>;
  invariant(canon.name === m.name && canon.version === m.version && canon.url === m.url && canon.sha256 === m.sha256 && canon.size === m.size && canon.kind === m.kind, 'canonicalBytes does not carry the manifest\'s fields');
}

export const manifestTarget: FuzzTarget<ManifestCase, { dir: string; file: string }> = {
  name: 'manifest',
  title: 'deploy manifests (a file for `edgeq deploy`, or a deploy command\'s object) and their Ed25519 signatures',
  entryPoints: ['agent/json-file.ts readJsonFile + deploy/manifest.ts parseManifest', 'deploy/manifest.ts artifactSource', 'deploy/signature.ts canonicalBytes, checkSignature'],
  checks: 'fields typed, sha256 lower case, parseManifest idempotent, canonicalBytes carries the fields; an http(s) source has no credentials, a file source is an absolute path; a manifest signed by a configured key and left intact verifies, any change after signing does not',
  codes: [...MANIFEST_CODES, ...SIGNATURE_CODES],
  testRuns: 500,
  arbitrary: () => manifestCase,
  setup: () => {
    const dir = sandbox('edgeq-fuzz-manifest-');
    return { dir, file: join(dir, 'manifest.json') };
  },
  teardown: (s) => rmSync(s.dir, { recursive: true, force: true }),
  run(c, s) {
    writeFileSync(s.file, c.text);
    const fromFile = tryParse(MANIFEST_CODES, () => parseManifest(readJsonFile(s.file, 'E_MANIFEST_INVALID'), s.file));
    if (fromFile) checkManifest(fromFile);
    const m = tryParse(MANIFEST_CODES, () => parseManifest(c.manifest.value));
    if (!m) return;
    checkManifest(m);
    const src = tryParse(MANIFEST_CODES, () => artifactSource(m, s.dir));
    if (src?.kind === 'http') invariant((src.url.protocol === 'http:' || src.url.protocol === 'https:') && !src.url.username && !src.url.password, `http source ${src.url.href}`);
    if (src?.kind === 'file') invariant(isAbsolute(src.path), `file source ${src.path} is not absolute`);
    const k = fuzzKeys();
    const keyList = c.keys === 'none' ? [] : c.keys === 'signer' ? [k.signer.pub] : c.keys === 'other' ? [k.other.pub] : [k.other.pub, k.signer.pub];
    const outcome = tryParse(SIGNATURE_CODES, () => checkSignature(m, keyList, c.required));
    const signerKnown = c.keys === 'signer' || c.keys === 'both';
    if (c.manifest.intact && signerKnown) invariant(outcome === 'verified', `an intact signed manifest gave ${outcome ?? 'an error'}`);
    if (outcome === 'verified') invariant(signerKnown && c.manifest.intact, 'a signature verified that no configured key made over these fields');
    if (outcome === 'unsigned') invariant(m.signature === undefined && !c.required, 'unsigned accepted while signatures are required');
  },
  size: (c) => Buffer.byteLength(c.text),
  show: (c) => showJson({ manifest: c.manifest.value, intact: c.manifest.intact, text: c.text, keys: c.keys, required: c.required }),
  raw: (c) => utf8(c.text),
};

// ---------------------------------------------------------------------------------------------
// the endpoint over HTTP

interface ServerSandbox {
  dir: string;
  server: RunningServer;
}

/** The models the fuzzed server serves, with the input specs ONNX Runtime reports for them. */
const SERVED_MODELS: Record<string, InputSpec[]> = {
  fmnist: [{ name: 'input', type: 'float32', shape: ['N', 1, 28, 28] }],
  pair: [{ name: 'a', type: 'float32', shape: ['N', 3] }, { name: 'b', type: 'float32', shape: ['N', 3] }],
  ids: [{ name: 'ids', type: 'int64', shape: ['N'] }],
};

const SERVER_MAX_BODY = 256 * 1024;

function writeServedModels(dir: string): void {
  const model = (nodes: NodeProto[], inputs: ValueInfoProto[], outputs: ValueInfoProto[]) =>
    create(ModelProtoSchema, { irVersion: 8n, opsetImport: [create(OperatorSetIdProtoSchema, { domain: '', version: 13n })], graph: create(GraphProtoSchema, { name: 'g', node: nodes, input: inputs, output: outputs }) });
  writeModel(model([makeNode('Add', ['a', 'b'], ['y'], 'add')], [valueInfo('a', DT.FLOAT, ['N', 3]), valueInfo('b', DT.FLOAT, ['N', 3])], [valueInfo('y', DT.FLOAT, ['N', 3])]), join(dir, 'pair.onnx'));
  writeModel(model([makeNode('Cast', ['ids'], ['f'], 'cast', { to: DT.FLOAT }), makeNode('Add', ['f', 'f'], ['y'], 'double')], [valueInfo('ids', DT.INT64, ['N'])], [valueInfo('y', DT.FLOAT, ['N'])]), join(dir, 'ids.onnx'));
}

export interface ServerCase {
  model: string;
  method: string;
  path: 'infer' | 'health' | 'models' | 'metrics' | 'raw';
  rawPath: string;
  contentType: string | null;
  accept: string | null;
  body: BodyCase | { kind: 'bytes'; body: Uint8Array };
}

const serverCase: fc.Arbitrary<ServerCase> = fc
  .record({
    model: fc.oneof({ arbitrary: fc.constantFrom('fmnist', 'pair', 'ids'), weight: 12 }, { arbitrary: fc.constantFrom('none', '%66mnist', '..', 'a%2Fb', '%', 'x'.repeat(70), '__proto__'), weight: 1 }),
    method: fc.oneof({ arbitrary: fc.constant('POST'), weight: 12 }, { arbitrary: fc.constantFrom('GET', 'PUT', 'HEAD', 'DELETE', 'OPTIONS'), weight: 1 }),
    path: fc.oneof({ arbitrary: fc.constant('infer' as const), weight: 16 }, { arbitrary: fc.constantFrom('health' as const, 'models' as const, 'metrics' as const, 'raw' as const), weight: 1 }),
    rawPath: fc.oneof(fc.constantFrom('/', '/v1/models/', '/v1/models//infer', '/v1/models/fmnist/infer/', '/v1/health?x=1', '//', '/v1/models/fmnist/infer?'), fc.webPath()),
    contentType: fc.oneof({ arbitrary: fc.constant(null), weight: 3 }, { arbitrary: fc.constantFrom('application/json', 'application/x-npy', 'application/octet-stream', 'text/plain', 'application/json; charset=latin1', 'APPLICATION/X-NPY', ';;', 'application/x-npy, application/json'), weight: 2 }),
    accept: fc.option(fc.constantFrom('application/json', 'application/x-npy', '*/*', 'application/x-npy;q=0.1, application/json', 'garbage'), { nil: null }),
  })
  .chain((r) => {
    const specs = Object.hasOwn(SERVED_MODELS, r.model) ? SERVED_MODELS[r.model] : undefined;
    const body = specs ? fc.oneof({ arbitrary: bodyCaseFor(specs), weight: 8 }, { arbitrary: fc.uint8Array({ maxLength: 64, size: 'max' }).map((b) => ({ kind: 'bytes' as const, body: b })), weight: 1 }) : fc.uint8Array({ maxLength: 64, size: 'max' }).map((b) => ({ kind: 'bytes' as const, body: b }));
    return body.map((b) => ({ ...r, body: b }));
  });

interface HttpReply {
  status: number;
  type: string;
  body: Buffer;
}

function send(socketPath: string, method: string, path: string, headers: Record<string, string>, body?: Uint8Array): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, method, path, headers: { Connection: 'close', ...headers, ...(body ? { 'Content-Length': String(body.length) } : {}) }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }));
    });
    req.setTimeout(20_000, () => req.destroy(new Finding('hang', `no reply to ${method} ${path} within 20 s`)));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

export const serverTarget: FuzzTarget<ServerCase, ServerSandbox> = {
  name: 'http-server',
  title: 'the inference endpoint over HTTP (a real server on a Unix socket): methods, paths, headers, bodies',
  entryPoints: ['agent/serve/server.ts startServer (routing, readBody, isNpyBody, the decoders, ONNX Runtime, the reply)'],
  checks: 'every reply is 200 or a 4xx; errors are JSON {error: {code, message}}; the server answers /v1/health after every case',
  codes: [],
  async: true,
  testRuns: 150,
  arbitrary: () => serverCase,
  async setup() {
    const dir = sandbox('edgeq-fuzz-serve-');
    writeServedModels(dir);
    const server = await startServer({
      socket: join(dir, 'edgeq.sock'),
      threads: 1,
      maxBodyBytes: SERVER_MAX_BODY,
      models: staticModels([
        { name: 'fmnist', version: 1, kind: 'fp32', path: join(ROOT, 'test/fixtures/fmnist/model.onnx') },
        { name: 'pair', version: 1, kind: 'fp32', path: join(dir, 'pair.onnx') },
        { name: 'ids', version: 1, kind: 'fp32', path: join(dir, 'ids.onnx') },
      ]),
    });
    return { dir, server };
  },
  async teardown(s) {
    await s.server.close();
    rmSync(s.dir, { recursive: true, force: true });
  },
  async run(c, s) {
    const socket = s.server.socket!;
    const path = c.path === 'infer' ? `/v1/models/${c.model}/infer` : c.path === 'health' ? '/v1/health' : c.path === 'models' ? '/v1/models' : c.path === 'metrics' ? '/metrics' : c.rawPath;
    const headers: Record<string, string> = {};
    if (c.contentType !== null) headers['Content-Type'] = c.contentType;
    if (c.accept !== null) headers.Accept = c.accept;
    const body = c.method === 'GET' || c.method === 'HEAD' ? undefined : c.body.body;
    const r = await send(socket, c.method, path, headers, body);
    const what = `${c.method} ${path} → ${r.status} ${r.body.subarray(0, 300).toString('utf8')}`;
    invariant(r.status === 200 || (r.status >= 400 && r.status < 500), `server error: ${what}`);
    if (r.status >= 400 && c.method !== 'HEAD') {
      invariant(r.type.startsWith('application/json'), `error reply of type ${r.type}: ${what}`);
      let code: unknown;
      try {
        code = (JSON.parse(r.body.toString('utf8')) as { error?: { code?: unknown } }).error?.code;
      } catch {
        throw new Finding('invariant', `error reply is not JSON: ${what}`);
      }
      invariant(typeof code === 'string' && code.startsWith('E_'), `error reply without a code: ${what}`);
    }
    if (r.status === 200 && c.method !== 'HEAD' && r.type.startsWith('application/json')) {
      try {
        JSON.parse(r.body.toString('utf8'));
      } catch {
        throw new Finding('invariant', `200 reply of type JSON is not JSON: ${what}`);
      }
    }
    const health = await send(socket, 'GET', '/v1/health', {});
    invariant(health.status === 200, `the server stopped answering /v1/health (${health.status}) after ${what}`);
  },
  size: (c) => c.body.body.length,
  show: (c) => showJson({ ...c, body: c.body.kind === 'json' ? Buffer.from(c.body.body).toString('utf8') : c.body.body }, 512),
  raw: (c) => c.body.body,
};

// ---------------------------------------------------------------------------------------------
// case arbitraries defined after the values they use

/** Arguments per command type (built once: a schema's arbitrary is costly to build); deploy carries a manifest. */
const COMMAND_ARG_VALUES: Record<string, fc.Arbitrary<unknown>> = Object.fromEntries(
  COMMAND_TYPES.map((t) => [t, fromSchema(COMMAND_ARGS[t], { overrides: { manifest: manifestValue.map((m) => m.value) } })]),
);

const MESSAGE_VALUES = { status: fromSchema(StatusSchema), reply: fromSchema(ReplySchema), report: fromSchema(ReportSchema) };

const commandCase: fc.Arbitrary<CommandCase> = fc.oneof(
  {
    arbitrary: fc
      .tuple(
        fc.oneof({ arbitrary: fc.constantFrom(...COMMAND_TYPES), weight: 12 }, { arbitrary: fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom('__proto__', 'toString', 'constructor')), weight: 1 }),
        commandId,
        rarely(fc.tuple(fc.constantFrom('extra', 'version', '__proto__'), anyJson), 12),
      )
      .chain(([type, id, extra]) => {
        const args = Object.hasOwn(COMMAND_ARG_VALUES, type) ? COMMAND_ARG_VALUES[type] : anyJson;
        // args left out 1 in 10 (fc.option's nil one time in freq)
        return fc.option(args, { freq: 10, nil: undefined }).map((a) => objectOf([['id', id], ['type', type], ...(a === undefined ? [] : [['args', a] as const]), ...(extra ? [extra] : [])]));
      })
      .chain((value) => jsonText(fc.constant(value)))
      .chain(({ value, mutations, text }) => fc.oneof({ arbitrary: fc.constant(undefined), weight: 8 }, { arbitrary: fc.integer({ min: 0, max: 256 }), weight: 1 }).map((maxBytes) => ({ kind: 'command' as const, value, mutations, payload: text, maxBytes }))),
    weight: 12,
  },
  { arbitrary: fc.uint8Array({ maxLength: 256, size: 'max' }).map((payload) => ({ kind: 'raw' as const, payload })), weight: 1 },
  {
    arbitrary: fc.tuple(fc.integer({ min: 1, max: 20000 }), fc.constantFrom('[', '{"a":')).map(([depth, open]) => ({ kind: 'deep' as const, payload: `{"id":"d","type":"status","args":${open.repeat(depth)}1${(open === '[' ? ']' : '}').repeat(depth)}}` })),
    weight: 1,
  },
  { arbitrary: fc.integer({ min: DEFAULT_MAX_COMMAND_BYTES - 40, max: DEFAULT_MAX_COMMAND_BYTES + 40 }).map((n) => ({ kind: 'large' as const, payload: `{"id":"l","type":"status","x":"${'a'.repeat(n)}"}` })), weight: 1 },
);

const fleetCase: fc.Arbitrary<FleetCase> = fc
  .tuple(fc.constantFrom('status' as const, 'reply' as const, 'report' as const), deviceId, rarely(fc.array(textMutation, { minLength: 1, maxLength: 2 }), 6))
  .chain(([channel, id, topicMutations]) => {
    const topic = `${DEFAULT_PREFIX}/${id}/${channel}`;
    return fc.oneof(
      { arbitrary: jsonText(MESSAGE_VALUES[channel]).map(({ value, mutations, text }) => ({ channel, topic: topicMutations ? mutateText(topic, topicMutations) : topic, value, mutations, payload: text as string | Uint8Array })), weight: 10 },
      { arbitrary: fc.uint8Array({ maxLength: 128, size: 'max' }).map((b) => ({ channel, topic, value: undefined, mutations: [] as TextMutation[], payload: b as string | Uint8Array })), weight: 1 },
    );
  });

const manifestCase: fc.Arbitrary<ManifestCase> = fc.record({
  manifest: manifestValue,
  mutations: fc.oneof({ arbitrary: fc.constant([] as TextMutation[]), weight: 4 }, { arbitrary: fc.array(textMutation, { minLength: 1, maxLength: 3 }), weight: 1 }),
  keys: fc.constantFrom('none' as const, 'signer' as const, 'other' as const, 'both' as const),
  required: fc.boolean(),
}).map((r) => ({ ...r, text: mutateText(JSON.stringify(r.manifest.value) ?? '', r.mutations) }));

/** Every target, in the order the runner takes them. */
export const TARGETS: readonly AnyTarget[] = [onnxTarget, npyTarget, commandTarget, fleetTarget, bodyTarget, manifestTarget, serverTarget, onnxRuntimeTarget];

export function targetNamed(name: string): AnyTarget | undefined {
  return TARGETS.find((t) => t.name === name);
}
