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
 * A positive whole number, or undefined when the flag was not given. yargs turns "abc" into NaN
 * for number options; that is refused here with the flag's name and the bad value.
 */
export function positiveInt(value: number | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isInteger(value) || value < 1) throw new EdgeqError('E_ARGUMENT', `${flag} must be a positive whole number, got ${Number.isNaN(value) ? 'something that is not a number' : value}`);
  return value;
}
