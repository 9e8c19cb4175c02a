/** `edgeq bench`: latency, throughput, load time, size and peak memory of one ONNX model. */
import type { Argv } from 'yargs';
import { benchInChild, type BenchResult } from '../../quant/bench-process.js';
import { EdgeqError } from '../../quant/errors.js';
import { countArg, parseInputFiles } from '../args.js';
import { formatBytes, printJson, progressLine, reportError } from '../output.js';

export interface BenchArgs {
  model: string;
  data?: string[];
  shape?: string[];
  /** Numbers arrive as text so a bad value can be quoted back as typed. */
  batch?: string | string[];
  threads?: string | string[];
  runs?: string | string[];
  warmup?: string | string[];
  spin: boolean;
  json: boolean;
}

const DEFAULTS = { threads: 1, runs: 100, warmup: 10 };

/** `--shape NAME=1,3,224,224` (or `--shape 1,3,224,224` for a single-input model), repeated. */
export function parseShapeArgs(values: readonly string[]): Map<string, number[]> {
  const map = new Map<string, number[]>();
  for (const v of values) {
    const eq = v.lastIndexOf('=');
    const [name, dims] = eq >= 0 ? [v.slice(0, eq), v.slice(eq + 1)] : ['', v];
    if (eq === 0) throw new EdgeqError('E_ARGUMENT', `--shape ${v}: no input name before "="`);
    const parts = dims.split(/[,x]/).map((s) => s.trim());
    if (parts.some((p) => !/^\d+$/.test(p) || Number(p) < 1)) {
      throw new EdgeqError('E_ARGUMENT', `--shape ${v}: the dimensions must be positive integers separated by commas, as in --shape ${name || 'input'}=1,3,224,224`);
    }
    if (map.has(name)) throw new EdgeqError('E_ARGUMENT', name ? `--shape names input "${name}" twice` : 'more than one --shape without NAME=; name each model input');
    map.set(name, parts.map(Number));
  }
  if (map.has('') && map.size > 1) throw new EdgeqError('E_ARGUMENT', 'mix of --shape DIMS and --shape NAME=DIMS: name every input');
  return map;
}

export function benchCommand<T>(y: Argv<T>): Argv<T> {
  return y.command(
    'bench',
    "Measure a model's latency, throughput, load time, size and peak memory in ONNX Runtime",
    (b) =>
      b
        .usage(
          'edgeq bench --model m.onnx [--data x.npy] [--shape NAME=1,3,224,224] [--batch B] [--threads T] [--runs R] [--warmup W] [--json]\n\n' +
            'Loads the model in a separate process, runs it W times untimed and R times timed on one\n' +
            'batch of inputs, and reports latency percentiles, throughput, session load time, file size\n' +
            "and the peak resident memory of that process (the caller's memory does not count).\n" +
            'Inputs are the first B samples of --data, or deterministic random data of the input shapes;\n' +
            'a dynamic batch dimension takes --batch, any other dynamic dimension needs --shape.',
        )
        .option('model', { type: 'string', demandOption: true, describe: 'ONNX model to measure' })
        .option('data', { type: 'string', array: true, describe: 'inputs: FILE.npy (leading axis = samples; the first B are used), or NAME=FILE.npy per model input (repeat); default: random data' })
        .option('shape', { type: 'string', array: true, describe: 'full shape of an input with dynamic dimensions: NAME=1,3,224,224 (repeat per input)' })
        .option('batch', { type: 'string', describe: "samples per run [default: the model's fixed batch, else 1]" })
        .option('threads', { type: 'string', describe: `ONNX Runtime intra-op threads [default: ${DEFAULTS.threads}]` })
        .option('runs', { type: 'string', describe: `timed runs [default: ${DEFAULTS.runs}]` })
        .option('warmup', { type: 'string', describe: `untimed runs before timing [default: ${DEFAULTS.warmup}]` })
        .option('spin', { type: 'boolean', default: true, describe: "let idle intra-op threads spin (ORT's default); --no-spin turns it off" })
        .option('json', { type: 'boolean', default: false, describe: 'print {"ok": true, "result": …} (or the error) as one JSON object' })
        .example('edgeq bench --model m.onnx --runs 200 --threads 2', "random inputs of the model's input shapes")
        .example('edgeq bench --model m.onnx --data test.npy --batch 8 --json', 'the first 8 samples of test.npy, JSON result')
        .example('edgeq bench --model bert.onnx --shape input_ids=1,128 --shape attention_mask=1,128', 'sizes for dynamic dimensions'),
    async (argv) => {
      await runBench(argv as unknown as BenchArgs);
    },
  );
}

export async function runBench(args: BenchArgs): Promise<void> {
  const progress = progressLine(!args.json);
  try {
    const batch = countArg('--batch', args.batch);
    const threads = countArg('--threads', args.threads) ?? DEFAULTS.threads;
    const runs = countArg('--runs', args.runs) ?? DEFAULTS.runs;
    const warmup = countArg('--warmup', args.warmup, 0) ?? DEFAULTS.warmup;
    const result = await benchInChild({
      model: args.model,
      batch,
      threads,
      runs,
      warmup,
      spin: args.spin,
      data: args.data?.length ? parseInputFiles(args.data, '--data') : undefined,
      shapes: args.shape?.length ? parseShapeArgs(args.shape) : undefined,
      onProgress: (stage, done, total) => progress.update(stage === 'warmup' ? 'warming up' : 'timing', done, total),
    });
    progress.done();
    if (args.json) printJson(result);
    else process.stdout.write(formatBench(result));
  } catch (e) {
    progress.done();
    reportError(e, args.json);
  }
}

const ms = (x: number) => `${x.toFixed(3)} ms`;

export function formatBench(r: BenchResult): string {
  const rows: [string, string][] = [
    ['model', r.model],
    ['size', formatBytes(r.sizeBytes)],
    ['load', ms(r.loadMs)],
    ['p50', ms(r.p50Ms)],
    ['p90', ms(r.p90Ms)],
    ['p99', ms(r.p99Ms)],
    ['mean', ms(r.meanMs)],
    ['min', ms(r.minMs)],
    ['throughput', `${r.throughput.toFixed(1)} samples/s`],
    ['peak RSS', `${(r.peakRssBytes / 2 ** 20).toFixed(1)} MiB (benchmark process; ${(r.baseRssBytes / 2 ** 20).toFixed(1)} MiB before loading the model)`],
    ['threads', `${r.threads}${r.threads > 1 ? (r.spin ? ', spinning' : ', not spinning') : ''}`],
    ['batch', `${r.batch} (${r.runs} timed runs after ${r.warmup} warm-up)`],
    ...r.inputs.map((i, k): [string, string] => [k === 0 ? 'inputs' : '', `${i.name} [${i.shape.join(', ')}] ${i.dtype}, ${i.source === 'data' ? 'from --data' : 'random'}`]),
  ];
  const w = Math.max(...rows.map(([k]) => k.length)) + 2;
  return rows.map(([k, v]) => k.padEnd(w) + v).join('\n') + '\n';
}
