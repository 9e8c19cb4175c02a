/** Checks of command-line values that several commands share. */
import { EdgeqError } from '../quant/errors.js';

/** `--calib x.npy` (single input) or `--calib NAME=x.npy`, repeated (also `--data`). */
export function parseInputFiles(values: string[], flag: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const v of values) {
    const eq = v.indexOf('=');
    const [name, path] = eq > 0 && !v.slice(0, eq).includes('/') ? [v.slice(0, eq), v.slice(eq + 1)] : ['', v];
    if (!path) throw new EdgeqError('E_ARGUMENT', `${flag} ${v}: no file after "="`);
    if (map.has(name)) throw new EdgeqError('E_ARGUMENT', name ? `${flag} names input "${name}" twice` : `more than one ${flag} without NAME=; name each model input`);
    map.set(name, path);
  }
  if (map.has('') && map.size > 1) throw new EdgeqError('E_ARGUMENT', `mix of ${flag} FILE and ${flag} NAME=FILE: name every input`);
  return map;
}

/**
 * A whole number of at least `min` from a flag, or undefined when the flag was not given. Options
 * declared as strings keep the text, so the error can quote it; yargs turns "abc" into NaN for
 * number options.
 */
export function countArg(flag: string, raw: string | string[] | number | undefined, min = 1): number | undefined {
  if (raw === undefined) return undefined;
  if (Array.isArray(raw)) throw new EdgeqError('E_ARGUMENT', `${flag} given ${raw.length} times; give it once`);
  const what = min === 0 ? 'a whole number, 0 or more' : 'a positive integer';
  if (typeof raw === 'number' && Number.isNaN(raw)) throw new EdgeqError('E_ARGUMENT', `${flag} must be ${what}, got something that is not a number`);
  const text = String(raw).trim();
  if (!/^\d+$/.test(text)) throw new EdgeqError('E_ARGUMENT', `${flag} must be ${what}, got ${text === '' ? 'nothing' : text}`);
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) throw new EdgeqError('E_ARGUMENT', `${flag} must be ${what}, got ${text}`);
  return n;
}

/** A positive whole number (see countArg). */
export function positiveInt(value: number | undefined, flag: string): number | undefined {
  return countArg(flag, value, 1);
}
