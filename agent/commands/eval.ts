/** `edgeq eval`: accuracy of a model, and how far its quantized twin is from it, output by output and layer by layer. */
import type { Argv } from 'yargs';
import { evaluate, type ErrorStats, type EvaluateResult } from '../../quant/evaluate.js';
import { readModel } from '../../quant/onnx/model.js';
import { countArg, parseInputFiles } from '../args.js';
import { storeData } from '../from-store.js';
import { printJson, progressLine, reportError } from '../output.js';
import { withStoreSync } from './common.js';
import { needsModel } from './quantize.js';

export interface EvalArgs {
  model?: string;
  compare?: string;
  data?: string[];
  'from-store'?: boolean;
  'model-name'?: string;
  'state-dir'?: string;
  config?: string;
  labels?: string;
  layers: boolean;
  count?: string;
  batch?: string;
  threads?: string;
  top?: string;
  json: boolean;
}

export function evalCommand(y: Argv): Argv {
  return y.command(
    'eval',
    'Measure a model on .npy samples, and compare it with its int8 version (outputs, per-layer error)',
    (b) =>
      b
        .usage(
          'edgeq eval --model fp32.onnx [--compare int8.onnx] --data x.npy [--labels y.npy] [--layers] [options]\n\n' +
            'Runs the model (and the compared one) over the samples a batch at a time. With --labels:\n' +
            'top-1 and top-5 accuracy. With --compare: top-1 agreement of the two models and, per\n' +
            'output, SQNR (dB; higher is closer), cosine similarity and the largest absolute error.\n' +
            '--layers adds, for every tensor the int8 model quantizes, the SQNR between the fp32\n' +
            'activation and the int8 one, worst first: where the accuracy went.',
        )
        .option('model', { type: 'string', describe: 'the reference (fp32) ONNX model' })
        .option('compare', { type: 'string', describe: 'a model with the same inputs and outputs to compare against it (the int8 one)' })
        .option('data', { type: 'string', array: true, describe: 'samples: FILE.npy, or NAME=FILE.npy per model input (repeat)' })
        .option('from-store', { type: 'boolean', describe: 'evaluate a registered model on its held-out captured samples (with --model-name)' })
        .option('model-name', { type: 'string', describe: 'a model registered on this device (edgeq models ls)' })
        .option('state-dir', { type: 'string', describe: 'state directory holding the store' })
        .option('config', { type: 'string', describe: 'agent config file (JSON)' })
        .check((argv) => {
          needsModel('--data')(argv);
          if (argv['model-name'] === undefined && argv.data === undefined) throw new Error('Missing required argument: data');
          return true;
        })
        .option('labels', { type: 'string', describe: 'class labels (.npy, 1-D integers, one per sample) for top-1/top-5 accuracy' })
        .option('layers', { type: 'boolean', default: false, describe: 'per-layer error of the --compare model (a QDQ model such as edgeq writes)' })
        .option('count', { type: 'string', describe: 'use only the first N samples' })
        .option('batch', { type: 'string', describe: 'samples per run (default 32; a model with a fixed batch size uses its own)' })
        .option('threads', { type: 'string', describe: 'ONNX Runtime intra-op threads (default: all cores)' })
        .option('top', { type: 'string', default: '10', describe: 'with --layers, how many of the worst layers to print (--json lists all)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the result (or error) as one JSON object' })
        .example('edgeq eval --model m.onnx --data test.npy --labels labels.npy', 'top-1/top-5 of one model')
        .example('edgeq eval --model m.onnx --compare m.int8.onnx --data test.npy --labels labels.npy --layers', 'fp32 vs int8, with the worst layers'),
    async (argv) => {
      await runEval(argv as unknown as EvalArgs);
    },
  );
}

export async function runEval(args: EvalArgs): Promise<void> {
  const progress = progressLine(!args.json);
  try {
    const result = await withEvalData(args, (a) => {
      // Files a person names: edgeq's reader first, as deploy and registration do for theirs. It
      // refuses tensors whose dims promise more data than the file holds, on which ONNX Runtime
      // would allocate gigabytes. (Store versions were read when they were registered.)
      for (const f of [a.model, a.compare]) if (f !== undefined) readModel(f, { externalData: 'keep' });
      return evaluate({
      model: a.model!,
      compare: a.compare,
      data: parseInputFiles(a.data!, '--data'),
      labels: a.labels,
      layers: args.layers,
      count: countArg('--count', args.count),
      batch: countArg('--batch', args.batch),
      threads: countArg('--threads', args.threads),
      onProgress: (done, total) => progress.update('evaluating', done, total),
      });
    });
    progress.done();
    if (args.json) printJson(result);
    else process.stdout.write(renderEval(result, countArg('--top', args.top) ?? 10));
  } catch (e) {
    progress.done();
    reportError(e, args.json);
  }
}

/** With --from-store: the registered fp32 model and its held-out samples (and their labels). */
async function withEvalData<T>(args: EvalArgs, run: (a: EvalArgs) => Promise<T>): Promise<T> {
  const name = args['model-name'];
  if (!name) return run(args);
  const data = withStoreSync({ 'state-dir': args['state-dir'], config: args.config, json: args.json }, ({ store }) => storeData(store, name, { holdout: true }));
  try {
    const h = data.holdout!;
    return await run({ ...args, model: data.fp32.path, data: [...h.files].map(([n, p]) => `${n}=${p}`), labels: args.labels ?? h.labels });
  } finally {
    data.cleanup();
  }
}

const pct = (x: number | undefined) => (x === undefined ? '—' : `${(100 * x).toFixed(1)}%`);
const db = (x: number) => (x === Infinity ? 'exact' : `${x.toFixed(1)} dB`);
const num = (x: number) => (x === 0 ? '0' : Math.abs(x) >= 0.01 && Math.abs(x) < 1e4 ? x.toFixed(4) : x.toExponential(2));

/** Columns padded to their widest cell. */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_c, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()).join('\n') + '\n';
}

function errorCells(s: ErrorStats): string[] {
  return [db(s.sqnrDb), s.cosine.toFixed(5), num(s.maxAbsError), num(s.meanAbsError)];
}

export function renderEval(r: EvaluateResult, top: number): string {
  let out = `${r.samples} samples${r.classes ? `, ${r.classes} classes` : ''}\n`;
  const rows = [['model', 'top-1', 'top-5']];
  rows.push([r.model.path, pct(r.model.top1), pct(r.model.top5)]);
  if (r.compare) rows.push([r.compare.path, pct(r.compare.top1), pct(r.compare.top5)]);
  if (r.model.top1 !== undefined) out += table(rows);
  if (r.agreement !== undefined) out += `top-1 agreement: ${pct(r.agreement)}\n`;
  if (r.outputs) {
    out += '\n' + table([['output', 'shape', 'SQNR', 'cosine', 'max |err|', 'mean |err|'], ...r.outputs.map((o) => [o.name, `[${['N', ...o.sampleShape].join(', ')}]`, ...errorCells(o)])]);
  }
  if (r.layers) {
    const shown = r.layers.slice(0, top);
    out += `\nper-layer error, worst first (${shown.length} of ${r.layers.length}):\n`;
    out += table([['tensor', 'op', 'SQNR', 'cosine', 'max |err|', 'mean |err|'], ...shown.map((l) => [l.tensor, l.opType, ...errorCells(l)])]);
  }
  return out;
}
