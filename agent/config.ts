/**
 * The agent's configuration file (JSON). Only the `quantize` section exists so far: defaults for
 * `edgeq quantize` and the daemon's conversions, applied over the CPU's profile and under flags.
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

export interface AgentConfig {
  quantize: QuantizeConfig;
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

/** Validates a parsed config object; `source` names it in errors. */
export function parseConfig(value: unknown, source: string): AgentConfig {
  const bad = (why: string) => new EdgeqError('E_CONFIG_INVALID', `${source}: ${why}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('the configuration must be a JSON object');
  const top = value as Record<string, unknown>;
  for (const k of Object.keys(top)) if (k !== 'quantize') throw bad(`unknown key "${k}" (known: quantize)`);
  const q = top.quantize ?? {};
  if (typeof q !== 'object' || q === null || Array.isArray(q)) throw bad('"quantize" must be an object');
  for (const [k, v] of Object.entries(q)) {
    const rule = QUANTIZE_KEYS[k as keyof QuantizeConfig];
    if (!rule) throw bad(`unknown key "quantize.${k}" (known: ${Object.keys(QUANTIZE_KEYS).join(', ')})`);
    if (!rule[0](v)) throw bad(`"quantize.${k}" must be ${rule[1]}, got ${JSON.stringify(v)}`);
  }
  return { quantize: q as QuantizeConfig };
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
