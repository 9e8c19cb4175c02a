/** Command-line pieces of `fleet send` and `fleet devices`: --where conditions and command ARGS. */
import { DEVICE_ID } from '../agent/protocol/index.js';
import { FleetError } from './output.js';
import type { DeviceFilter, DeviceRecord } from './store/types.js';

export const WHERE_KEYS = ['id', 'online', 'arch', 'profile', 'cpu', 'os', 'hostname', 'agent', 'model'] as const;
export type WhereKey = (typeof WHERE_KEYS)[number];
export interface Where {
  key: WhereKey;
  value: string;
}

/** `--where key=value`, repeated (all must hold). */
export function parseWhere(values: readonly string[]): Where[] {
  return values.map((v) => {
    const eq = v.indexOf('=');
    const key = eq > 0 ? v.slice(0, eq).trim() : '';
    const value = eq > 0 ? v.slice(eq + 1).trim() : '';
    if (!key || !value) throw new FleetError('E_ARGUMENT', `--where ${JSON.stringify(v)}: expected key=value, e.g. arch=arm64 (keys: ${WHERE_KEYS.join(', ')})`, true);
    if (!(WHERE_KEYS as readonly string[]).includes(key)) throw new FleetError('E_ARGUMENT', `--where ${key}: unknown key (keys: ${WHERE_KEYS.join(', ')})`, true);
    if (key === 'online' && onlineValue(value) === 'bad') throw new FleetError('E_ARGUMENT', `--where online=${value}: use true, false or any`, true);
    return { key: key as WhereKey, value };
  });
}

function onlineValue(v: string): boolean | 'any' | 'bad' {
  const s = v.toLowerCase();
  if (['true', 'yes', '1', 'on'].includes(s)) return true;
  if (['false', 'no', '0', 'off'].includes(s)) return false;
  if (s === 'any' || s === '*') return 'any';
  return 'bad';
}

function glob(pattern: string): RegExp {
  return new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\?]/g, '\\$&').replace(/\*/g, '.*')}$`);
}

/**
 * The store filter and the in-memory test for a set of conditions. Devices must be online unless
 * a condition says otherwise (`online=false`, `online=any`) or `onlineDefault` is undefined.
 */
export function compileWhere(conds: readonly Where[], onlineDefault: boolean | undefined): { filter: DeviceFilter; test: (d: DeviceRecord) => boolean } {
  const filter: DeviceFilter = {};
  const tests: Array<(d: DeviceRecord) => boolean> = [];
  let online: boolean | 'any' | undefined = onlineDefault;
  for (const c of conds) {
    switch (c.key) {
      case 'online':
        online = onlineValue(c.value) as boolean | 'any';
        break;
      case 'arch':
        filter.arch = c.value;
        break;
      case 'profile':
        filter.profile = c.value;
        break;
      case 'id': {
        const re = glob(c.value);
        tests.push((d) => re.test(d.deviceId));
        break;
      }
      case 'cpu': {
        const needle = c.value.toLowerCase();
        tests.push((d) => (d.cpu ?? '').toLowerCase().includes(needle));
        break;
      }
      case 'os':
        tests.push((d) => d.status?.device?.os === c.value);
        break;
      case 'hostname': {
        const re = glob(c.value);
        tests.push((d) => re.test(d.hostname ?? ''));
        break;
      }
      case 'agent':
        tests.push((d) => d.agentVersion === c.value);
        break;
      case 'model':
        tests.push((d) => c.value in d.models);
        break;
    }
  }
  if (online === true || online === false) filter.online = online;
  return { filter, test: (d) => tests.every((f) => f(d)) };
}

/** Device ids from the command line: one or more, comma-separated. */
export function parseDeviceIds(text: string): string[] {
  const ids = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (ids.length === 0) throw new FleetError('E_ARGUMENT', 'name a device (or --all, or --where key=value)', true);
  for (const id of ids) {
    if (!DEVICE_ID.test(id)) throw new FleetError('E_ARGUMENT', `${JSON.stringify(id)} is not a device id (letters, digits, . _ : -; at most 128)`, true);
  }
  return [...new Set(ids)];
}

function coerce(raw: string): unknown {
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  if (raw === 'null') return null;
  if (/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(raw)) return Number(raw);
  if (/^[[{"]/.test(raw)) {
    try {
      return JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  return raw;
}

/**
 * Command arguments from the command line: one JSON object, or key=value pairs (values that look
 * like numbers, booleans or JSON become those; `a.b=v` sets key "b" of object "a", e.g.
 * `set.quantize.method=entropy` for config). `raw` keeps each value as typed, for a retry as a string.
 */
export function parseCommandArgs(words: readonly string[]): { args: Record<string, unknown>; raw: Map<string, string> } {
  const raw = new Map<string, string>();
  if (words.length === 1 && words[0].trim().startsWith('{')) {
    let v: unknown;
    try {
      v = JSON.parse(words[0]);
    } catch (e) {
      throw new FleetError('E_ARGUMENT', `ARGS is not valid JSON: ${(e as Error).message}`, true);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new FleetError('E_ARGUMENT', 'ARGS must be a JSON object', true);
    return { args: v as Record<string, unknown>, raw };
  }
  const args: Record<string, unknown> = {};
  for (const w of words) {
    const eq = w.indexOf('=');
    if (eq <= 0) throw new FleetError('E_ARGUMENT', `argument ${JSON.stringify(w)}: expected key=value (or one JSON object)`, true);
    const key = w.slice(0, eq);
    const value = w.slice(eq + 1);
    const dot = key.indexOf('.');
    if (dot > 0) {
      const outer = key.slice(0, dot);
      const inner = key.slice(dot + 1);
      const o = (args[outer] ??= {}) as Record<string, unknown>;
      if (typeof o !== 'object' || o === null) throw new FleetError('E_ARGUMENT', `argument ${key}: ${outer} is already a value`, true);
      o[inner] = coerce(value);
    } else {
      if (key in args) throw new FleetError('E_ARGUMENT', `argument ${key} given twice`, true);
      args[key] = coerce(value);
    }
    raw.set(key, value);
  }
  return { args, raw };
}
