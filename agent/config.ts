/**
 * The agent's configuration file (JSON): `quantize` (defaults for conversions, applied over the
 * CPU's profile and under flags), `stateDir` (where the store and model files live) and `serve`
 * (the local inference endpoint); the daemon (`edgeq run`) also reads `deviceId`, `broker`,
 * `prefix`, `threads`, `capture`, `import`, `queue`, `commands` and `shutdownTimeoutMs`
 * (agent/daemon/config.ts merges them with the environment and flags). Unknown keys are
 * refused, so a typo cannot pass silently.
 */
import { EdgeqError } from '../quant/errors.js';
import { readJsonFile } from './json-file.js';
import { METHODS } from '../quant/observe/range-search.js';
import { isProfileName, type Profile, type ProfileName } from '../quant/profiles.js';
import { DEVICE_ID, PREFIX } from './protocol/messages.js';
import type { StoreLimits } from './store/index.js';

export interface QuantizeConfig {
  profile?: ProfileName | 'auto';
  perChannel?: boolean;
  reduceRange?: boolean;
  activations?: 'uint8' | 'int8';
  method?: Profile['method'] | 'auto';
  bins?: number;
  percentile?: number;
  maxDrop?: number;
  biasCorrection?: boolean;
}

export interface ServeConfig {
  /** Unix socket path (default: edgeq.sock in the state directory). */
  socket?: string;
  /** Also listen on this TCP port. */
  port?: number;
  /** TCP address: loopback unless allowNonLoopback says otherwise. */
  host?: string;
  allowNonLoopback?: boolean;
  maxBodyBytes?: number;
  /** Largest input tensor of a request, in elements (default 16M); a bigger one is refused with 413. */
  maxElements?: number;
}

/** The fleet broker (MQTT 5). */
export interface BrokerConfig {
  /** mqtt://, mqtts://, ws:// or wss:// URL. */
  url?: string;
  username?: string;
  password?: string;
  /** PEM files: CA bundle to trust, and the client certificate and key (mutual TLS). */
  ca?: string;
  cert?: string;
  key?: string;
  /** Check the broker's certificate (default true). */
  rejectUnauthorized?: boolean;
  /** Seconds (default 30). */
  keepalive?: number;
  /** How long the broker keeps the session (subscriptions, queued commands) while the device is away, seconds (default 86400). */
  sessionExpiry?: number;
  connectTimeoutMs?: number;
  /** Reconnect delays: exponential from baseMs, capped at capMs, with full jitter (defaults 1000 and 60000). */
  reconnect?: { baseMs?: number; capMs?: number };
}

/** A capture policy as the config writes it (retention in days). */
export interface CapturePolicyConfig {
  enabled?: boolean;
  rate?: number;
  maxSamples?: number;
  maxBytes?: number;
  retentionDays?: number;
}

export interface CaptureConfig {
  /** Whether the endpoint captures at all (default true). */
  enabled?: boolean;
  /** Policies per model name, applied when the daemon starts. */
  policies?: Record<string, CapturePolicyConfig>;
  /** Samples (default 256) and bytes (default 64 MiB) waiting in memory for the store; beyond, new ones are dropped. */
  maxQueue?: number;
  maxQueueBytes?: number;
}

export interface ImportConfig {
  /** Sources the fleet's `import` command may read: absolute directory paths or http(s) URL prefixes. Empty: none. */
  allow?: string[];
  /** Largest file an import downloads or reads, bytes (default 256 MiB). */
  maxBytes?: number;
}

/** Deploying model artifacts (`edgeq deploy`, agent/deploy.ts). */
export interface DeployConfig {
  /** Directories local artifact files may be read from (absolute paths). Empty: none. */
  allow?: string[];
  /** Largest artifact accepted, bytes (default 2 GiB). */
  maxBytes?: number;
  /** A download with no data for this long fails (and resumes next time), ms (default 30000). */
  timeoutMs?: number;
  /** Free disk space to keep beyond the model and its int8 conversion, bytes (default 64 MiB). */
  minFreeBytes?: number;
  /** Versions kept per model (the active one always stays), default 3. */
  keepVersions?: number;
  /** Refuse manifests without a valid signature (default false). */
  requireSignature?: boolean;
  /** Ed25519 public keys (PEM files) that may sign manifests. */
  publicKeys?: string[];
  /** A newly activated version is pending until it has served this many inferences in a row without error (default 100; 0: the warm-up inference is enough). */
  confirmAfter?: number;
  /** Runtime failures of a pending version that roll it back (default 3). */
  maxFailures?: number;
  /** Starts of the serving process while a version is pending; the start after the last rolls it back (default 3). */
  maxPendingStarts?: number;
}

/** The probation policy (agent/probation.ts) a deploy section sets. */
export function probationPolicy(d: DeployConfig | undefined): { confirmAfter?: number; maxFailures?: number; maxStarts?: number } {
  return {
    ...(d?.confirmAfter !== undefined ? { confirmAfter: d.confirmAfter } : {}),
    ...(d?.maxFailures !== undefined ? { maxFailures: d.maxFailures } : {}),
    ...(d?.maxPendingStarts !== undefined ? { maxStarts: d.maxPendingStarts } : {}),
  };
}

export interface AgentConfig {
  quantize: QuantizeConfig;
  stateDir?: string;
  serve: ServeConfig;
  deviceId?: string;
  /** Topic prefix (default edgeq/v1). */
  prefix?: string;
  /** ONNX Runtime threads for the daemon's jobs and the endpoint. */
  threads?: number;
  broker?: BrokerConfig;
  capture?: CaptureConfig;
  import?: ImportConfig;
  /** Jobs that may wait behind the running one (default 16). */
  queue?: { max?: number };
  /** Largest command payload accepted, bytes (default 64 KiB). */
  commands?: { maxBytes?: number };
  /** How long a graceful stop may take, ms (default 20000). */
  shutdownTimeoutMs?: number;
  deploy?: DeployConfig;
  /** The SQLite store's size cap, bytes (default 1 GiB): capture stops at it. */
  store?: { maxBytes?: number };
  /** Messages waiting for the broker (defaults 10000 messages, 16 MiB); see StoreLimits. */
  outbox?: { maxMessages?: number; maxBytes?: number };
  /** Finished runs kept in the store (default 1000). */
  runs?: { keep?: number };
}

/** The store's caps a config sets (agent/store StoreLimits); unset ones keep their defaults. */
export function storeLimits(c: AgentConfig | undefined): Partial<StoreLimits> {
  const out: Partial<StoreLimits> = {};
  if (c?.store?.maxBytes !== undefined) out.maxBytes = c.store.maxBytes;
  if (c?.outbox?.maxMessages !== undefined) out.outboxMaxMessages = c.outbox.maxMessages;
  if (c?.outbox?.maxBytes !== undefined) out.outboxMaxBytes = c.outbox.maxBytes;
  if (c?.runs?.keep !== undefined) out.keepRuns = c.runs.keep;
  return out;
}

type Check = (v: unknown) => boolean;
/** A whole number from `min` up. */
const posIntAt = (min: number): Check => (v) => Number.isSafeInteger(v) && (v as number) >= min;
const bool: Check = (v) => typeof v === 'boolean';
const QUANTIZE_KEYS: Record<keyof QuantizeConfig, [Check, string]> = {
  profile: [(v) => v === 'auto' || (typeof v === 'string' && isProfileName(v)), '"fbgemm", "qnnpack" or "auto"'],
  perChannel: [bool, 'true or false'],
  reduceRange: [bool, 'true or false'],
  activations: [(v) => v === 'uint8' || v === 'int8', '"uint8" or "int8"'],
  method: [(v) => v === 'auto' || (METHODS as readonly unknown[]).includes(v), `one of ${METHODS.join(', ')}, auto`],
  bins: [(v) => Number.isInteger(v) && (v as number) >= 16 && (v as number) <= 65536, 'a whole number from 16 to 65536'],
  percentile: [(v) => typeof v === 'number' && v > 0 && v <= 100, 'a number in (0, 100]'],
  maxDrop: [(v) => typeof v === 'number' && v >= 0, 'a number of points, 0 or more'],
  biasCorrection: [bool, 'true or false'],
};

const SERVE_KEYS: Record<keyof ServeConfig, [Check, string]> = {
  socket: [(v) => typeof v === 'string' && v !== '', 'a socket path'],
  port: [(v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535, 'a TCP port, 0 to 65535'],
  host: [(v) => typeof v === 'string' && v !== '', 'an address'],
  allowNonLoopback: [bool, 'true or false'],
  maxBodyBytes: [(v) => Number.isInteger(v) && (v as number) > 0, 'a positive number of bytes'],
  maxElements: [posIntAt(1), 'a positive whole number of elements'],
};

const str: Check = (v) => typeof v === 'string' && v !== '';
const posInt = (max = Number.MAX_SAFE_INTEGER): Check => (v) => Number.isSafeInteger(v) && (v as number) > 0 && (v as number) <= max;
export const BROKER_SCHEMES = ['mqtt:', 'mqtts:', 'ws:', 'wss:'] as const;

/** Why `url` is not a broker URL edgeq can use, or undefined when it is. */
export function brokerUrlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `${JSON.stringify(url)} is not a URL (expected e.g. mqtt://broker.example:1883)`;
  }
  if (!(BROKER_SCHEMES as readonly string[]).includes(u.protocol)) return `${JSON.stringify(url)}: the scheme must be mqtt://, mqtts://, ws:// or wss://, not ${u.protocol}//`;
  if (!u.hostname) return `${JSON.stringify(url)} names no host`;
  if (u.username || u.password) return `${JSON.stringify(url)}: put the user name and password in broker.username/password or EDGEQ_USERNAME/EDGEQ_PASSWORD, not in the URL`;
  return undefined;
}

const BROKER_KEYS: Record<Exclude<keyof BrokerConfig, 'reconnect'>, [Check, string]> = {
  url: [(v) => typeof v === 'string' && brokerUrlProblem(v) === undefined, 'an mqtt://, mqtts://, ws:// or wss:// URL with a host'],
  username: [str, 'a user name'],
  password: [(v) => typeof v === 'string', 'a string'],
  ca: [str, 'the path of a PEM file'],
  cert: [str, 'the path of a PEM file'],
  key: [str, 'the path of a PEM file'],
  rejectUnauthorized: [bool, 'true or false'],
  keepalive: [posInt(65535), 'a whole number of seconds from 1 to 65535'],
  sessionExpiry: [(v) => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff, 'a whole number of seconds'],
  connectTimeoutMs: [posInt(), 'a positive whole number of milliseconds'],
};
const RECONNECT_KEYS: Record<string, [Check, string]> = {
  baseMs: [posInt(), 'a positive whole number of milliseconds'],
  capMs: [posInt(), 'a positive whole number of milliseconds'],
};
const POLICY_KEYS: Record<keyof CapturePolicyConfig, [Check, string]> = {
  enabled: [bool, 'true or false'],
  rate: [(v) => typeof v === 'number' && v >= 0 && v <= 1, 'a share from 0 to 1'],
  maxSamples: [(v) => Number.isSafeInteger(v) && (v as number) >= 0, 'a whole number, 0 or more'],
  maxBytes: [(v) => Number.isSafeInteger(v) && (v as number) >= 0, 'a whole number of bytes'],
  retentionDays: [(v) => typeof v === 'number' && v >= 0 && Number.isFinite(v), 'a number of days, 0 (keep forever) or more'],
};
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Validates a parsed config object; `source` names it in errors. */
export function parseConfig(value: unknown, source: string): AgentConfig {
  const bad = (why: string) => new EdgeqError('E_CONFIG_INVALID', `${source}: ${why}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('the configuration must be a JSON object');
  const top = value as Record<string, unknown>;
  const known = ['quantize', 'stateDir', 'serve', 'deviceId', 'prefix', 'threads', 'broker', 'capture', 'import', 'queue', 'commands', 'shutdownTimeoutMs', 'deploy', 'store', 'outbox', 'runs'];
  for (const k of Object.keys(top)) if (!known.includes(k)) throw bad(`unknown key "${k}" (known: ${known.join(', ')})`);
  if (top.stateDir !== undefined && (typeof top.stateDir !== 'string' || top.stateDir === '')) throw bad('"stateDir" must be a directory path');
  const serve = checkSection(top.serve, 'serve', SERVE_KEYS, bad) as ServeConfig;
  const q = checkSection(top.quantize, 'quantize', QUANTIZE_KEYS, bad) as QuantizeConfig;
  const out: AgentConfig = { quantize: q, serve, ...(top.stateDir ? { stateDir: top.stateDir as string } : {}) };

  if (top.deviceId !== undefined) {
    if (typeof top.deviceId !== 'string' || !DEVICE_ID.test(top.deviceId)) throw bad(`"deviceId" must be 1 to 128 letters, digits, '.', '_', ':' or '-' starting with a letter or digit (it is part of MQTT topic names), got ${JSON.stringify(top.deviceId)}`);
    out.deviceId = top.deviceId;
  }
  if (top.prefix !== undefined) {
    if (typeof top.prefix !== 'string' || !PREFIX.test(top.prefix)) throw bad(`"prefix" must be topic levels of letters, digits, '.', '_' or '-' separated by '/' (no wildcards, no leading or trailing '/'), got ${JSON.stringify(top.prefix)}`);
    out.prefix = top.prefix;
  }
  if (top.threads !== undefined) {
    if (!posInt(256)(top.threads)) throw bad(`"threads" must be a whole number from 1 to 256, got ${JSON.stringify(top.threads)}`);
    out.threads = top.threads as number;
  }
  if (top.shutdownTimeoutMs !== undefined) {
    if (!posInt()(top.shutdownTimeoutMs)) throw bad(`"shutdownTimeoutMs" must be a positive whole number of milliseconds, got ${JSON.stringify(top.shutdownTimeoutMs)}`);
    out.shutdownTimeoutMs = top.shutdownTimeoutMs as number;
  }
  if (top.broker !== undefined) {
    if (!isObject(top.broker)) throw bad('"broker" must be an object');
    const { reconnect, ...rest } = top.broker;
    const broker = checkSection(rest, 'broker', BROKER_KEYS, bad) as BrokerConfig;
    if (reconnect !== undefined) broker.reconnect = checkSection(reconnect, 'broker.reconnect', RECONNECT_KEYS, bad) as BrokerConfig['reconnect'];
    out.broker = broker;
  }
  if (top.capture !== undefined) {
    if (!isObject(top.capture)) throw bad('"capture" must be an object');
    const { enabled, policies, maxQueue, maxQueueBytes, ...others } = top.capture;
    const extra = Object.keys(others)[0];
    if (extra !== undefined) throw bad(`unknown key "capture.${extra}" (known: enabled, policies, maxQueue, maxQueueBytes)`);
    const queueKeys = Object.fromEntries(Object.entries({ maxQueue, maxQueueBytes }).filter(([, v]) => v !== undefined));
    const capture: CaptureConfig = checkSection(queueKeys, 'capture', {
      maxQueue: [posIntAt(1), 'a positive whole number of samples'],
      maxQueueBytes: [posIntAt(1), 'a positive whole number of bytes'],
    }, bad) as CaptureConfig;
    if (enabled !== undefined) {
      if (typeof enabled !== 'boolean') throw bad(`"capture.enabled" must be true or false, got ${JSON.stringify(enabled)}`);
      capture.enabled = enabled;
    }
    if (policies !== undefined) {
      if (!isObject(policies)) throw bad('"capture.policies" must be an object: model name → policy');
      capture.policies = {};
      for (const [name, p] of Object.entries(policies)) {
        if (!MODEL_NAME.test(name)) throw bad(`"capture.policies": ${JSON.stringify(name)} is not a model name`);
        capture.policies[name] = checkSection(p, `capture.policies.${name}`, POLICY_KEYS, bad) as CapturePolicyConfig;
      }
    }
    out.capture = capture;
  }
  if (top.import !== undefined) {
    if (!isObject(top.import)) throw bad('"import" must be an object');
    const { allow, maxBytes, ...others } = top.import;
    const extra = Object.keys(others)[0];
    if (extra !== undefined) throw bad(`unknown key "import.${extra}" (known: allow, maxBytes)`);
    const imp: ImportConfig = {};
    if (allow !== undefined) {
      if (!Array.isArray(allow)) throw bad('"import.allow" must be a list of absolute directory paths and http(s) URL prefixes');
      for (const a of allow) {
        if (typeof a !== 'string' || !(a.startsWith('/') || /^https?:\/\/[^/]+/.test(a))) throw bad(`"import.allow": ${JSON.stringify(a)} is neither an absolute path nor an http(s) URL prefix`);
      }
      imp.allow = allow as string[];
    }
    if (maxBytes !== undefined) {
      if (!posInt()(maxBytes)) throw bad(`"import.maxBytes" must be a positive whole number of bytes, got ${JSON.stringify(maxBytes)}`);
      imp.maxBytes = maxBytes as number;
    }
    out.import = imp;
  }
  if (top.queue !== undefined) out.queue = checkSection(top.queue, 'queue', { max: [posInt(10_000), 'a whole number from 1 to 10000'] }, bad) as AgentConfig['queue'];
  if (top.store !== undefined) out.store = checkSection(top.store, 'store', { maxBytes: [posIntAt(1024 * 1024), 'a whole number of bytes, 1 MiB or more'] }, bad) as AgentConfig['store'];
  if (top.outbox !== undefined) {
    out.outbox = checkSection(top.outbox, 'outbox', { maxMessages: [posIntAt(1), 'a positive whole number of messages'], maxBytes: [posIntAt(1024), 'a whole number of bytes, 1 KiB or more'] }, bad) as AgentConfig['outbox'];
  }
  if (top.runs !== undefined) out.runs = checkSection(top.runs, 'runs', { keep: [posIntAt(1), 'a positive whole number of runs'] }, bad) as AgentConfig['runs'];
  if (top.commands !== undefined) out.commands = checkSection(top.commands, 'commands', { maxBytes: [posInt(16 * 1024 * 1024), 'a whole number of bytes from 1 to 16 MiB'] }, bad) as AgentConfig['commands'];
  if (top.deploy !== undefined) out.deploy = checkSection(top.deploy, 'deploy', DEPLOY_KEYS, bad) as DeployConfig;
  return out;
}

const absPaths: Check = (v) => Array.isArray(v) && v.every((p) => typeof p === 'string' && p.startsWith('/'));
const DEPLOY_KEYS: Record<keyof DeployConfig, [Check, string]> = {
  allow: [absPaths, 'a list of absolute directory paths'],
  maxBytes: [posInt(), 'a positive whole number of bytes'],
  timeoutMs: [posInt(), 'a positive whole number of milliseconds'],
  minFreeBytes: [(v) => Number.isSafeInteger(v) && (v as number) >= 0, 'a whole number of bytes, 0 or more'],
  keepVersions: [posInt(1000), 'a whole number from 1 to 1000'],
  requireSignature: [bool, 'true or false'],
  publicKeys: [(v) => Array.isArray(v) && v.every((p) => typeof p === 'string' && p !== ''), 'a list of PEM file paths'],
  confirmAfter: [(v) => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 1_000_000, 'a whole number from 0 to 1000000'],
  maxFailures: [posInt(1000), 'a whole number from 1 to 1000'],
  maxPendingStarts: [posInt(1000), 'a whole number from 1 to 1000'],
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkSection(value: unknown, name: string, rules: Record<string, [Check, string]>, bad: (why: string) => EdgeqError): Record<string, unknown> {
  const q = value ?? {};
  if (typeof q !== 'object' || q === null || Array.isArray(q)) throw bad(`"${name}" must be an object`);
  for (const [k, v] of Object.entries(q)) {
    const rule = rules[k];
    if (!rule) throw bad(`unknown key "${name}.${k}" (known: ${Object.keys(rules).join(', ')})`);
    if (!rule[0](v)) throw bad(`"${name}.${k}" must be ${rule[1]}, got ${JSON.stringify(v)}`);
  }
  return q as Record<string, unknown>;
}

export function loadConfig(path: string): AgentConfig {
  return parseConfig(readJsonFile(path, 'E_CONFIG_INVALID'), path);
}
