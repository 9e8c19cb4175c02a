/**
 * Captured samples out of the store as .npy files (one per model input, plus labels when every
 * sample has one): what `capture export` writes and what calibration and evaluation from the
 * store read. Written a sample at a time, so memory does not grow with the count.
 */
import { join } from 'node:path';
import { EdgeqError } from '../quant/errors.js';
import { NpyWriter, type NpyDtype } from '../quant/npy.js';
import type { Split, Store } from './store/index.js';

const NPY: Record<string, NpyDtype> = { float32: 'float32', float64: 'float64', uint8: 'uint8', int8: 'int8', int32: 'int32', int64: 'int64' };

export interface Exported {
  count: number;
  /** One .npy per input name. */
  files: Map<string, string>;
  /** labels.npy (int64), when every exported sample has a label. */
  labels?: string;
}

export function exportSamples(store: Store, model: string, split: Split | 'all', dir: string): Exported {
  const count = store.countSamples(model, split);
  if (count === 0) {
    throw new EdgeqError('E_CALIB_EMPTY', `model "${model}" has no ${split === 'all' ? '' : `${split} `}samples in the store (capture some, or edgeq capture import)`);
  }
  const writers = new Map<string, NpyWriter>();
  const labels = new BigInt64Array(count);
  let labelled = 0;
  let i = 0;
  try {
    for (const s of store.iterateSamples(model, { split })) {
      for (const t of s.tensors) {
        let w = writers.get(t.name);
        if (!w) {
          const dtype = NPY[t.dtype];
          if (!dtype) throw new EdgeqError('E_DTYPE_MISMATCH', `input "${t.name}" holds ${t.dtype} samples, which .npy export does not support`);
          w = new NpyWriter(join(dir, `${t.name.replace(/[^A-Za-z0-9._-]/g, '_')}.npy`), dtype, [count, ...t.shape.slice(1)]);
          writers.set(t.name, w);
        }
        w.append(t.data);
      }
      if (s.label !== null) {
        labels[i] = BigInt(s.label);
        labelled++;
      }
      if (++i === count) break;
    }
    if (i !== count) throw new EdgeqError('E_RUNTIME', `the store changed during export: ${i} of ${count} samples read`);
    for (const w of writers.values()) w.close();
  } catch (e) {
    for (const w of writers.values()) w.abort();
    throw e;
  }
  const out: Exported = { count, files: new Map([...writers].map(([n, w]) => [n, w.path])) };
  if (labelled === count) {
    const path = join(dir, 'labels.npy');
    const w = new NpyWriter(path, 'int64', [count]);
    w.append(new Uint8Array(labels.buffer));
    w.close();
    out.labels = path;
  }
  return out;
}
