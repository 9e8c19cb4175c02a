/** `edgeq capture import|ls|stats|export|prune|policy`: the samples this device keeps per model. */
import { mkdirSync } from 'node:fs';
import type { Argv } from 'yargs';
import { EdgeqError } from '../../quant/errors.js';
import { countArg, parseInputFiles } from '../args.js';
import { importNpy } from '../capture/import.js';
import { formatBytes, printJson, progressLine, reportError } from '../output.js';
import type { CapturePolicy, Split } from '../store/index.js';
import { exportSamples } from '../store-export.js';
import { STORE_OPTIONS, withStore, withStoreSync, type StoreArgs } from './common.js';
import { table } from './eval.js';

interface ModelArgs extends StoreArgs {
  model: string;
}

interface ImportArgs extends ModelArgs {
  file: string[];
  labels?: string;
  source: string;
}

const MODEL = { type: 'string', demandOption: true, describe: 'model name (edgeq models ls)' } as const;

/** Streams .npy rows into the store, 64 samples per transaction. */
async function importSamples(args: ImportArgs, onProgress: (done: number, total: number) => void) {
  return withStore(args, ({ store }) => importNpy(store, args.model, parseInputFiles(args.file, '--file'), { labels: args.labels, source: args.source, onProgress }));
}

function parsePolicy(a: Record<string, unknown>): Partial<CapturePolicy> {
  const p: Partial<CapturePolicy> = {};
  if (a.enable !== undefined) p.enabled = Boolean(a.enable);
  if (a.rate !== undefined) {
    const r = Number(a.rate);
    if (!(r >= 0 && r <= 1)) throw new EdgeqError('E_ARGUMENT', `--rate must be a share from 0 to 1, got ${String(a.rate)}`);
    p.rate = r;
  }
  const ms = countArg('--max-samples', a['max-samples'] as string | undefined, 0);
  if (ms !== undefined) p.maxSamples = ms;
  const mb = a['max-bytes'] as string | undefined;
  if (mb !== undefined) p.maxBytes = parseBytes(mb);
  const days = a['retention-days'] as string | undefined;
  if (days !== undefined) {
    const d = Number(days);
    if (!(d >= 0) || !Number.isFinite(d)) throw new EdgeqError('E_ARGUMENT', `--retention-days must be 0 (keep forever) or more, got ${days}`);
    p.retentionMs = Math.round(d * 86_400_000);
  }
  return p;
}

/** "512", "64K", "256M", "1G" (binary units). */
export function parseBytes(text: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(String(text).trim());
  if (!m) throw new EdgeqError('E_ARGUMENT', `--max-bytes must be a size such as 500000, 64K, 256M or 1G, got ${text}`);
  const unit = (m[2] ?? '').toUpperCase()[0];
  return Number(m[1]) * (unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : 1);
}

function run<A extends StoreArgs>(fn: (a: A) => Promise<void> | void) {
  return async (argv: unknown) => {
    const a = argv as A;
    try {
      await fn(a);
    } catch (e) {
      reportError(e, a.json);
    }
  };
}

export function captureCommand(y: Argv): Argv {
  return y.command('capture', "Manage the inputs this device keeps for calibration (per model)", (b) =>
    b
      .usage('edgeq capture <import|ls|stats|export|prune|policy> --model NAME [options]\n\nThe local endpoint (edgeq serve) captures inputs per each model\'s policy: a sampling rate,\ncaps on samples and bytes kept as a uniform reservoir sample, de-duplication, a retention age.')
      .command(
        'import',
        'Add samples from .npy files (deliberate: the policy\'s rate and on/off switch do not apply, its caps do)',
        (c) =>
          c
            .options(STORE_OPTIONS)
            .option('model', MODEL)
            .option('file', { type: 'string', array: true, demandOption: true, describe: 'samples: FILE.npy, or NAME=FILE.npy per model input' })
            .option('labels', { type: 'string', describe: 'class labels (.npy, 1-D integers, one per sample)' })
            .option('source', { type: 'string', default: 'import', describe: 'recorded as the samples\' source' }),
        run<ImportArgs>(async (a) => {
          const progress = progressLine(!a.json);
          const r = await importSamples(a, (d, t) => progress.update('importing', d, t));
          progress.done();
          if (a.json) return printJson(r);
          const o = r.outcomes;
          process.stdout.write(`${r.model}: ${r.offered} samples offered: ${o.kept} kept, ${o.duplicate} duplicates, ${o['reservoir-full']} over the caps${o['store-full'] ? `, ${o['store-full']} refused (the store is at store.maxBytes)` : ''}; the store now keeps ${r.stats.kept} (${formatBytes(r.stats.bytes)})\n`);
        }),
      )
      .command(
        'ls',
        'List kept samples',
        (c) => c.options(STORE_OPTIONS).option('model', MODEL).option('limit', { type: 'string', default: '20', describe: 'how many (0: all)' }),
        run<ModelArgs & { limit: string }>((a) => {
          const limit = countArg('--limit', a.limit, 0) ?? 20;
          const rows = withStoreSync(a, ({ store }) => {
            const out = [];
            for (const s of store.iterateSamples(a.model, limit ? { limit } : {})) {
              out.push({ id: s.id, at: new Date(s.at).toISOString(), source: s.source, split: s.split, label: s.label, sha256: s.sha256, inputs: s.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.data.byteLength })) });
            }
            return out;
          });
          if (a.json) return printJson(rows);
          process.stdout.write(table([['id', 'captured', 'source', 'split', 'label', 'sha256', 'inputs'], ...rows.map((r) => [String(r.id), r.at, r.source, r.split, r.label === null ? '' : String(r.label), r.sha256.slice(0, 12), r.inputs.map((i) => `${i.name}[${i.shape.join('×')}]`).join(' ')])]));
        }),
      )
      .command(
        'stats',
        'Counters of what was offered, kept, dropped and why',
        (c) => c.options(STORE_OPTIONS).option('model', { type: 'string', describe: 'one model (default: all)' }),
        run<StoreArgs & { model?: string }>((a) => {
          const stats = withStoreSync(a, ({ store }) => {
            const names = a.model ? [a.model] : store.listModels().map((m) => m.name);
            return names.map((n) => ({ model: n, policy: store.getPolicy(n), ...store.captureStats(n), calibration: store.countSamples(n, 'calibration'), holdout: store.countSamples(n, 'holdout') }));
          });
          if (a.json) return printJson(stats);
          process.stdout.write(table([
            ['model', 'kept', 'bytes', 'calib/holdout', 'seen', 'sampled out', 'duplicates', 'over caps', 'evicted', 'refused', 'policy'],
            ...stats.map((s) => [s.model, String(s.kept), formatBytes(s.bytes), `${s.calibration}/${s.holdout}`, String(s.seen), String(s.sampledOut), String(s.duplicates), String(s.reservoirFull), String(s.evicted), String(s.refused), `${s.policy.enabled ? 'on' : 'off'}, rate ${s.policy.rate}, ≤${s.policy.maxSamples} / ${formatBytes(s.policy.maxBytes)}, ${s.policy.retentionMs ? `${Math.round(s.policy.retentionMs / 86_400_000)} d` : 'kept forever'}`]),
          ]));
        }),
      )
      .command(
        'export',
        'Write kept samples as .npy files (one per input, plus labels.npy when all are labelled)',
        (c) =>
          c
            .options(STORE_OPTIONS)
            .option('model', MODEL)
            .option('out', { type: 'string', demandOption: true, describe: 'directory to write into (created if missing)' })
            .option('split', { type: 'string', choices: ['all', 'calibration', 'holdout'], default: 'all', describe: 'which part: calibration (≈80%) or holdout (≈20%, by content hash)' }),
        run<ModelArgs & { out: string; split: Split | 'all' }>((a) => {
          mkdirSync(a.out, { recursive: true });
          const r = withStoreSync(a, ({ store }) => exportSamples(store, a.model, a.split, a.out));
          const out = { count: r.count, files: Object.fromEntries(r.files), ...(r.labels ? { labels: r.labels } : {}) };
          if (a.json) return printJson(out);
          process.stdout.write(`wrote ${r.count} samples: ${[...r.files.values(), ...(r.labels ? [r.labels] : [])].join(', ')}\n`);
        }),
      )
      .command(
        'prune',
        'Drop samples older than each model\'s retention age',
        (c) => c.options(STORE_OPTIONS).option('model', { type: 'string', describe: 'one model (default: all)' }),
        run<StoreArgs & { model?: string }>((a) => {
          const n = withStoreSync(a, ({ store }) => store.pruneSamples(a.model));
          if (a.json) return printJson({ pruned: n });
          process.stdout.write(`pruned ${n} samples\n`);
        }),
      )
      .command(
        'policy',
        'Show or change a model\'s capture policy',
        (c) =>
          c
            .options(STORE_OPTIONS)
            .option('model', MODEL)
            .option('enable', { type: 'boolean', describe: 'capture on (--no-enable: off)' })
            .option('rate', { type: 'string', describe: 'share of requests considered, 0 to 1' })
            .option('max-samples', { type: 'string', describe: 'cap on kept samples' })
            .option('max-bytes', { type: 'string', describe: 'cap on kept bytes (e.g. 256M)' })
            .option('retention-days', { type: 'string', describe: 'drop samples older than this on prune (0: keep forever)' }),
        run<ModelArgs & Record<string, unknown>>((a) => {
          const change = parsePolicy(a);
          const policy = withStoreSync(a, ({ store }) => (Object.keys(change).length ? store.setPolicy(a.model, change) : store.getPolicy(a.model)));
          if (a.json) return printJson(policy);
          process.stdout.write(`${a.model}: capture ${policy.enabled ? 'on' : 'off'}, rate ${policy.rate}, at most ${policy.maxSamples} samples and ${formatBytes(policy.maxBytes)}, ${policy.retentionMs ? `kept ${policy.retentionMs / 86_400_000} days` : 'kept forever'}\n`);
        }),
      )
      .demandCommand(1, 'name a subcommand: import, ls, stats, export, prune or policy'),
  );
}
