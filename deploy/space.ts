/** Free disk space, checked before a download starts. */
import { statfsSync } from 'node:fs';
import { EdgeqError } from '../quant/errors.js';

/** The int8 model of an fp32 model is about a quarter of its size; 0.35 leaves room for QDQ nodes and scales. */
export const INT8_RATIO = 0.35;
export const DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024;

/** Bytes an unprivileged process may still write in the file system holding `dir`. */
export function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

export interface SpaceNeed {
  free: number;
  need: number;
}

/**
 * Refuses (E_DISK_SPACE) unless the file system of `dir` holds `size` more bytes (less
 * `alreadyHave`, a partial download), an int8 conversion of it and `minFreeBytes` to spare.
 */
export function checkSpace(dir: string, size: number, opts: { minFreeBytes?: number; alreadyHave?: number; free?: number } = {}): SpaceNeed {
  const margin = opts.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES;
  const need = Math.max(0, size - (opts.alreadyHave ?? 0)) + Math.ceil(size * INT8_RATIO) + margin;
  const free = opts.free ?? freeBytes(dir);
  if (free < need) {
    const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
    throw new EdgeqError('E_DISK_SPACE', `not enough free disk space in ${dir}: the model (${mib(size)}), its int8 conversion and the ${mib(margin)} reserve (deploy.minFreeBytes) need ${mib(need)}, ${mib(free)} are free; free some space or lower deploy.keepVersions`);
  }
  return { free, need };
}
