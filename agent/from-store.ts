/**
 * Calibration and evaluation data from the store: the fp32 model of a registered name and its
 * captured samples, exported to temporary .npy files — the calibration split for quantize, the
 * held-out split for eval — so the quantizer reads the store's data exactly as it reads files.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EdgeqError } from '../quant/errors.js';
import type { ModelVersion, Store } from './store/index.js';
import { exportSamples, type Exported } from './store-export.js';

export interface StoreData {
  /** The fp32 version the int8 model is made from (the active one if fp32, else the newest fp32). */
  fp32: ModelVersion;
  calibration?: Exported;
  holdout?: Exported;
  /** Removes the temporary files. */
  cleanup(): void;
}

export function fp32Version(store: Store, name: string): ModelVersion {
  if (!store.hasModel(name)) throw new EdgeqError('E_MODEL_UNKNOWN', `no model "${name}" on this device (edgeq models ls)`);
  const active = store.activeVersion(name);
  if (active?.kind === 'fp32') return active;
  const fp32 = store.listVersions(name).filter((v) => v.kind === 'fp32').at(-1);
  if (!fp32) throw new EdgeqError('E_MODEL_UNKNOWN', `model "${name}" has no fp32 version to quantize`);
  return fp32;
}

export function storeData(store: Store, name: string, want: { calibration?: boolean; holdout?: boolean }): StoreData {
  const fp32 = fp32Version(store, name);
  const dir = mkdtempSync(join(tmpdir(), 'edgeq-data-'));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  try {
    const out: StoreData = { fp32, cleanup };
    for (const split of ['calibration', 'holdout'] as const) {
      if (!want[split]) continue;
      out[split] = exportSamples(store, name, split, mkdtempSync(join(dir, `${split}-`)));
    }
    return out;
  } catch (e) {
    cleanup();
    throw e;
  }
}
