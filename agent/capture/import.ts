/**
 * Importing samples from .npy files into a model's reservoir: `edgeq capture import` and the
 * daemon's `import` command. Deliberate imports skip the policy's on/off switch and rate; its
 * caps, de-duplication and the reservoir still apply.
 */
import { readLabels } from '../../quant/data.js';
import { EdgeqError } from '../../quant/errors.js';
import { NpyFile } from '../../quant/npy.js';
import type { CaptureStats, OfferOutcome, Store } from '../store/index.js';
import { fromTypedArray } from './tensors.js';

export interface ImportResult {
  model: string;
  offered: number;
  outcomes: Record<OfferOutcome, number>;
  stats: CaptureStats;
}

export interface ImportOptions {
  /** Class labels (.npy, 1-D integers, one per sample). */
  labels?: string;
  /** Recorded as the samples' source. */
  source: string;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Streams the rows of .npy files (one per model input; the key '' stands for a single-input
 * model's input) into `model`'s reservoir, 64 samples per transaction.
 */
export function importNpy(store: Store, model: string, files: Map<string, string>, opts: ImportOptions): ImportResult {
  const target = store.captureTarget(model);
  const paths = new Map(files);
  if (paths.has('')) {
    if (target.inputs.length !== 1) throw new EdgeqError('E_CALIB_MISSING', `model "${model}" has ${target.inputs.length} inputs: give a file per input (NAME=FILE.npy)`);
    paths.set(target.inputs[0].name, paths.get('')!);
    paths.delete('');
  }
  const opened = new Map<string, NpyFile>();
  try {
    for (const [n, p] of paths) opened.set(n, NpyFile.open(p));
    const counts = new Set([...opened.values()].map((f) => f.count));
    if (counts.size > 1) throw new EdgeqError('E_SHAPE_MISMATCH', `the input arrays hold different sample counts (${[...counts].join(', ')})`);
    const total = [...counts][0] ?? 0;
    const labels = opts.labels ? readLabels(opts.labels, total, 'samples', true) : undefined;
    const outcomes: Record<OfferOutcome, number> = { kept: 0, 'sampled-out': 0, duplicate: 0, 'reservoir-full': 0, disabled: 0, 'store-full': 0 };
    const batch = 64;
    for (let start = 0; start < total; start += batch) {
      const n = Math.min(batch, total - start);
      const samples = [];
      for (let i = 0; i < n; i++) {
        const tensors = [...opened].map(([name, f]) => fromTypedArray(name, f.read(start + i, 1), [1, ...f.shape.slice(1)]));
        samples.push({ tensors, source: opts.source, ...(labels ? { label: Number(labels[start + i]) } : {}) });
      }
      for (const o of store.offerSamples(model, samples, Math.random, { imported: true })) outcomes[o]++;
      opts.onProgress?.(start + n, total);
    }
    return { model, offered: total, outcomes, stats: store.captureStats(model) };
  } finally {
    for (const f of opened.values()) f.close();
  }
}
