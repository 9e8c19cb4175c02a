/**
 * The agent's configuration file (JSON): `quantize` (defaults for conversions, applied over the
 * CPU's profile and under flags), `stateDir` (where the store and model files live) and `serve`
 * (the local inference endpoint). Unknown keys are refused, so a typo cannot pass silently.
 */
import { readFileSync } from 'node:fs';
import { EdgeqError, fsError } from '../quant/errors.js';
import { METHODS } from '../quant/observe/range-search.js';
import { isProfileName, type Profile, type ProfileName } from '../quant/profiles.js';

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
}

export interface AgentConfig {
  quantize: QuantizeConfig;
  stateDir?: string;
  serve: ServeConfig;
}

type Check = (v: unknown) => boolean;
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
};

/** Validates a parsed config object; `source` names it in errors. */
export function parseConfig(value: unknown, source: string): AgentConfig {
  const bad = (why: string) => new EdgeqError('E_CONFIG_INVALID', `${source}: ${why}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('the configuration must be a JSON object');
  const top = value as Record<string, unknown>;
  const known = ['quantize', 'stateDir', 'serve'];
  for (const k of Object.keys(top)) if (!known.includes(k)) throw bad(`unknown key "${k}" (known: ${known.join(', ')})`);
  if (top.stateDir !== undefined && (typeof top.stateDir !== 'string' || top.stateDir === '')) throw bad('"stateDir" must be a directory path');
  const serve = checkSection(top.serve, 'serve', SERVE_KEYS, bad) as ServeConfig;
  const q = checkSection(top.quantize, 'quantize', QUANTIZE_KEYS, bad) as QuantizeConfig;
  return { quantize: q, serve, ...(top.stateDir ? { stateDir: top.stateDir as string } : {}) };
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
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw fsError(e, path);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new EdgeqError('E_CONFIG_INVALID', `${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseConfig(value, path);
}
