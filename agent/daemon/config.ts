/**
 * The daemon's settings, from (lowest to highest) the config file, the environment (EDGEQ_*),
 * the command line, and the overrides the fleet set with the `config` command (persisted in the
 * state directory; only the keys COMMAND_ARGS.config allows). Everything is checked before the
 * daemon opens anything, and every problem is one E_CONFIG_INVALID message naming its source.
 */
import { createHmac } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { EdgeqError } from '../../quant/errors.js';
import { brokerUrlProblem, loadConfig, storeLimits, type AgentConfig, type CapturePolicyConfig, type DeployConfig, type QuantizeConfig, type ServeConfig } from '../config.js';
import type { StoreLimits } from '../store/index.js';
import { COMMAND_ARGS, DEFAULT_MAX_COMMAND_BYTES, DEFAULT_PREFIX, DEVICE_ID, PREFIX } from '../protocol/messages.js';
import { resolveStateDir, socketFile } from '../state.js';
import { describeIssues } from '../protocol/report.js';

export const DEFAULT_CONFIG_FILE = '/etc/edgeq/config.json';
export const OVERRIDES_FILE = 'config-overrides.json';

/** What `edgeq run` takes on its command line. */
export interface RunFlags {
  config?: string;
  broker?: string;
  deviceId?: string;
  stateDir?: string;
  prefix?: string;
  username?: string;
  password?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  threads?: number;
  socket?: string;
  port?: number;
  /** false: no local endpoint. */
  endpoint?: boolean;
}

export interface BrokerSettings {
  url: string;
  username?: string;
  password?: string;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** Where the TLS files came from (for logs; never their contents). */
  tlsFiles: { ca?: string; cert?: string; key?: string };
  rejectUnauthorized: boolean;
  keepalive: number;
  sessionExpiry: number;
  connectTimeoutMs: number;
  reconnect: { baseMs: number; capMs: number };
}

/** The keys the fleet may change (COMMAND_ARGS.config), as stored in the overrides file. */
export type Overrides = Partial<{ 'quantize.method': QuantizeConfig['method']; 'quantize.maxDrop': number; 'quantize.biasCorrection': boolean; threads: number }>;

export interface DaemonConfig {
  deviceId: string;
  /** Where the device id came from: flag, env, file, machine-id or hostname. */
  deviceIdSource: string;
  prefix: string;
  stateDir: string;
  broker: BrokerSettings;
  threads?: number;
  quantize: QuantizeConfig;
  endpoint: false | (ServeConfig & { socket: string });
  capture: { enabled: boolean; policies: Record<string, CapturePolicyConfig>; maxQueue?: number; maxQueueBytes?: number };
  /** The store's caps from the config (store.maxBytes, outbox.*, runs.keep). */
  limits: Partial<StoreLimits>;
  import: { allow: string[]; maxBytes: number };
  deploy: DeployConfig;
  queueMax: number;
  maxCommandBytes: number;
  shutdownTimeoutMs: number;
  /** The config file read, if any. */
  configFile?: string;
  /** The fleet's overrides in force. */
  overrides: Overrides;
}

export interface ResolveOptions {
  env?: NodeJS.ProcessEnv;
  /** Read when no --config or EDGEQ_CONFIG names a file, and only if it exists. */
  defaultConfigFile?: string;
  machineIdFile?: string;
}

const bad = (message: string) => new EdgeqError('E_CONFIG_INVALID', message);

function readPem(path: string, what: string): Buffer {
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : (e as Error).message;
    throw bad(`${what} ${path} cannot be read: ${why}`);
  }
  if (!data.toString('latin1').includes('-----BEGIN ')) throw bad(`${what} ${path} is not a PEM file (no "-----BEGIN" line)`);
  return data;
}

/**
 * The default device id: derived from /etc/machine-id (an HMAC of it, not the id itself, which
 * systemd says must stay private), else the host name with characters topics cannot carry
 * replaced.
 */
export function defaultDeviceId(machineIdFile = '/etc/machine-id'): { id: string; source: string } {
  try {
    const mid = readFileSync(machineIdFile, 'utf8').trim();
    if (/^[0-9a-f]{32}$/i.test(mid)) return { id: `dev-${createHmac('sha256', mid.toLowerCase()).update('edgeq device id').digest('hex').slice(0, 12)}`, source: machineIdFile };
  } catch {
    // no machine id: fall back to the host name
  }
  const h = hostname().replace(/[^A-Za-z0-9._:-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 128);
  if (h && DEVICE_ID.test(h)) return { id: h, source: 'hostname' };
  throw bad('no device id: this machine has no /etc/machine-id and no usable host name; set deviceId in the config, EDGEQ_DEVICE_ID or --device-id');
}

function envInt(env: NodeJS.ProcessEnv, name: string, min: number, max: number): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < min || Number(raw) > max) throw bad(`${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

/** The fleet's overrides saved in the state directory ({} when none). */
export function loadOverrides(stateDir: string): Overrides {
  const path = join(stateDir, OVERRIDES_FILE);
  if (!existsSync(path)) return {};
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw bad(`${path} (settings the fleet changed) is not valid JSON: ${(e as Error).message}; fix or delete it`);
  }
  const r = COMMAND_ARGS.config.shape.set.safeParse(value);
  if (!r.success) throw bad(`${path} (settings the fleet changed): ${describeIssues(r.error)}; fix or delete it`);
  return r.data as Overrides;
}

/** Writes the overrides atomically (temp file, fsync, rename), readable by the owner only. */
export function saveOverrides(stateDir: string, o: Overrides): void {
  const path = join(stateDir, OVERRIDES_FILE);
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, JSON.stringify(o, null, 2) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** Applies overrides to the settings they change (mutates and returns `cfg`). */
export function applyOverrides(cfg: DaemonConfig, o: Overrides): DaemonConfig {
  if (o['quantize.method'] !== undefined) cfg.quantize.method = o['quantize.method'];
  if (o['quantize.maxDrop'] !== undefined) cfg.quantize.maxDrop = o['quantize.maxDrop'];
  if (o['quantize.biasCorrection'] !== undefined) cfg.quantize.biasCorrection = o['quantize.biasCorrection'];
  if (o.threads !== undefined) cfg.threads = o.threads;
  cfg.overrides = { ...cfg.overrides, ...o };
  return cfg;
}

export function resolveDaemonConfig(flags: RunFlags, ro: ResolveOptions = {}): DaemonConfig {
  const env = ro.env ?? process.env;
  const explicit = flags.config ?? (env.EDGEQ_CONFIG || undefined);
  const defaultFile = ro.defaultConfigFile ?? DEFAULT_CONFIG_FILE;
  const configFile = explicit ?? (existsSync(defaultFile) ? defaultFile : undefined);
  let file: AgentConfig = { quantize: {}, serve: {} };
  if (configFile) {
    try {
      file = loadConfig(configFile);
    } catch (e) {
      if ((e as EdgeqError).code === 'E_CONFIG_INVALID') throw e;
      throw bad(`config file ${configFile}: ${(e as Error).message}`);
    }
  }
  const fb = file.broker ?? {};

  // device id
  let deviceId: string;
  let deviceIdSource: string;
  if (flags.deviceId !== undefined) [deviceId, deviceIdSource] = [flags.deviceId, '--device-id'];
  else if (env.EDGEQ_DEVICE_ID) [deviceId, deviceIdSource] = [env.EDGEQ_DEVICE_ID, 'EDGEQ_DEVICE_ID'];
  else if (file.deviceId) [deviceId, deviceIdSource] = [file.deviceId, `deviceId in ${configFile}`];
  else ({ id: deviceId, source: deviceIdSource } = defaultDeviceId(ro.machineIdFile));
  if (!DEVICE_ID.test(deviceId)) {
    throw bad(`${deviceIdSource}: device id ${JSON.stringify(deviceId)} cannot be part of a topic name; use 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit`);
  }

  // prefix
  const [prefix, prefixSource] = flags.prefix !== undefined ? [flags.prefix, '--prefix'] : env.EDGEQ_PREFIX ? [env.EDGEQ_PREFIX, 'EDGEQ_PREFIX'] : [file.prefix ?? DEFAULT_PREFIX, 'prefix'];
  if (!PREFIX.test(prefix)) throw bad(`${prefixSource}: topic prefix ${JSON.stringify(prefix)} must be levels of letters, digits, '.', '_' or '-' separated by '/', without wildcards or a leading or trailing '/'`);

  // broker
  const [url, urlSource] = flags.broker !== undefined ? [flags.broker, '--broker'] : env.EDGEQ_BROKER ? [env.EDGEQ_BROKER, 'EDGEQ_BROKER'] : [fb.url, `broker.url in ${configFile}`];
  if (!url) throw bad(`no broker: set broker.url in the config file${configFile ? ` (${configFile})` : ` (${defaultFile} does not exist)`}, EDGEQ_BROKER, or --broker mqtt://HOST:1883`);
  const urlProblem = brokerUrlProblem(url);
  if (urlProblem) throw bad(`${urlSource}: ${urlProblem}`);
  const secure = url.startsWith('mqtts:') || url.startsWith('wss:');
  const tlsFiles = {
    ca: flags.tlsCa ?? (env.EDGEQ_TLS_CA || undefined) ?? fb.ca,
    cert: flags.tlsCert ?? (env.EDGEQ_TLS_CERT || undefined) ?? fb.cert,
    key: flags.tlsKey ?? (env.EDGEQ_TLS_KEY || undefined) ?? fb.key,
  };
  if (!secure && (tlsFiles.ca || tlsFiles.cert || tlsFiles.key)) throw bad(`TLS files are set but the broker URL ${url} is not mqtts:// or wss://; use mqtts:// (or drop the TLS settings)`);
  if (Boolean(tlsFiles.cert) !== Boolean(tlsFiles.key)) throw bad('mutual TLS needs both a client certificate and its key (broker.cert and broker.key, EDGEQ_TLS_CERT and EDGEQ_TLS_KEY, or --tls-cert and --tls-key)');
  const username = flags.username ?? (env.EDGEQ_USERNAME || undefined) ?? fb.username;
  const password = flags.password ?? (env.EDGEQ_PASSWORD || undefined) ?? fb.password;
  if (password !== undefined && username === undefined) throw bad('a broker password is set without a user name (broker.username, EDGEQ_USERNAME or --username)');
  const reconnect = { baseMs: fb.reconnect?.baseMs ?? 1000, capMs: fb.reconnect?.capMs ?? 60_000 };
  if (reconnect.capMs < reconnect.baseMs) throw bad(`broker.reconnect.capMs (${reconnect.capMs}) is below baseMs (${reconnect.baseMs})`);
  const broker: BrokerSettings = {
    url,
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(tlsFiles.ca ? { ca: readPem(tlsFiles.ca, 'the broker CA file') } : {}),
    ...(tlsFiles.cert ? { cert: readPem(tlsFiles.cert, 'the client certificate') } : {}),
    ...(tlsFiles.key ? { key: readPem(tlsFiles.key, 'the client key') } : {}),
    tlsFiles,
    rejectUnauthorized: fb.rejectUnauthorized ?? true,
    keepalive: fb.keepalive ?? 30,
    sessionExpiry: fb.sessionExpiry ?? 86_400,
    connectTimeoutMs: fb.connectTimeoutMs ?? 10_000,
    reconnect,
  };

  // threads, state, endpoint
  const threads = flags.threads ?? envInt(env, 'EDGEQ_THREADS', 1, 256) ?? file.threads;
  if (threads !== undefined && !(Number.isSafeInteger(threads) && threads >= 1 && threads <= 256)) throw bad(`--threads must be a whole number from 1 to 256, got ${threads}`);
  const stateDir = resolveStateDir({ flag: flags.stateDir, config: file.stateDir, env });
  const serve = file.serve ?? {};
  const endpoint = flags.endpoint === false ? false : { ...serve, socket: flags.socket ?? serve.socket ?? socketFile(stateDir), ...(flags.port !== undefined ? { port: flags.port } : {}) };

  const cfg: DaemonConfig = {
    deviceId,
    deviceIdSource,
    prefix,
    stateDir,
    broker,
    ...(threads !== undefined ? { threads } : {}),
    quantize: { ...file.quantize },
    endpoint,
    capture: {
      enabled: file.capture?.enabled ?? true, policies: file.capture?.policies ?? {},
      ...(file.capture?.maxQueue !== undefined ? { maxQueue: file.capture.maxQueue } : {}),
      ...(file.capture?.maxQueueBytes !== undefined ? { maxQueueBytes: file.capture.maxQueueBytes } : {}),
    },
    limits: storeLimits(file),
    import: { allow: file.import?.allow ?? [], maxBytes: file.import?.maxBytes ?? 256 * 1024 * 1024 },
    deploy: file.deploy ?? {},
    queueMax: file.queue?.max ?? 16,
    maxCommandBytes: file.commands?.maxBytes ?? DEFAULT_MAX_COMMAND_BYTES,
    shutdownTimeoutMs: file.shutdownTimeoutMs ?? 20_000,
    ...(configFile ? { configFile } : {}),
    overrides: {},
  };
  return applyOverrides(cfg, loadOverrides(stateDir));
}

/** The settings for logs: no password, no key material. */
export function describeConfig(c: DaemonConfig): Record<string, unknown> {
  return {
    deviceId: c.deviceId,
    deviceIdSource: c.deviceIdSource,
    prefix: c.prefix,
    stateDir: c.stateDir,
    configFile: c.configFile ?? null,
    broker: { url: c.broker.url, username: c.broker.username ?? null, password: c.broker.password !== undefined ? '(set)' : null, tls: c.broker.tlsFiles, keepalive: c.broker.keepalive, sessionExpiry: c.broker.sessionExpiry },
    threads: c.threads ?? null,
    endpoint: c.endpoint === false ? false : { socket: c.endpoint.socket, port: c.endpoint.port ?? null },
    capture: { enabled: c.capture.enabled, policies: Object.keys(c.capture.policies) },
    import: { allow: c.import.allow, maxBytes: c.import.maxBytes },
    queueMax: c.queueMax,
    maxCommandBytes: c.maxCommandBytes,
    shutdownTimeoutMs: c.shutdownTimeoutMs,
    overrides: c.overrides,
  };
}
