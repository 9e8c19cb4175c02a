/** `edgeq quantize`: float32 ONNX model + calibration .npy → int8 QDQ model. */
import type { Argv } from 'yargs';
import { EdgeqError, METHODS, isProfileName, profileWith, quantize, type CalibrationMethod, type QuantizeOptions, type QuantizeResult } from '../../quant/index.js';
import { parseInputFiles, positiveInt } from '../args.js';
import { loadConfig } from '../config.js';
import { storeData, type StoreData } from '../from-store.js';
import { withStoreSync } from './common.js';
import { chooseProfile, localCpu } from '../detect.js';
import { formatBytes, printJson, progressLine, reportError } from '../output.js';

export interface QuantizeArgs {
  model?: string;
  calib?: string[];
  'from-store'?: boolean;
  'model-name'?: string;
  'state-dir'?: string;
  out: string;
  profile?: string;
  config?: string;
  method?: string;
  'calib-count'?: number;
  'per-channel'?: boolean;
  'per-tensor'?: boolean;
  'reduce-range'?: boolean;
  activations?: string;
  bins?: number;
  percentile?: number;
  labels?: string;
  'max-drop'?: number;
  'bias-correction'?: boolean;
  exclude: string[];
  threads?: number;
  json: boolean;
}

/**
 * The options of a quantization run, shared by `quantize` and `optimize` (which adds evaluation
 * and benchmarking). `calibLabels`: --labels labels the calibration samples (quantize); optimize
 * uses --labels for its evaluation data instead.
 */
export function quantizeOptions(o: { calibLabels: boolean }) {
  return {
    model: { type: 'string', describe: 'float32 ONNX model to convert' },
    calib: { type: 'string', array: true, describe: 'calibration samples: FILE.npy, or NAME=FILE.npy per model input (repeat)' },
    'from-store': { type: 'boolean', describe: 'take the model and calibration samples from the device store (with --model-name)' },
    'model-name': { type: 'string', describe: 'a model registered on this device (edgeq models ls); its captured samples are the data' },
    'state-dir': { type: 'string', describe: 'state directory holding the store (see edgeq serve --help)' },
    out: { type: 'string', describe: 'where to write the int8 model (written atomically)' },
    profile: { type: 'string', choices: ['auto', 'fbgemm', 'qnnpack'], describe: 'quantization profile; auto (default) picks from this CPU' },
    config: { type: 'string', describe: 'JSON file whose "quantize" section sets defaults (profile, perChannel, reduceRange, activations, method, bins, percentile, maxDrop, biasCorrection); flags override it' },
    method: { type: 'string', choices: [...METHODS, 'auto'], describe: "activation range method (default: the profile's, histogram); auto tries every method and granularity on held-out samples and keeps the best" },
    percentile: { type: 'number', describe: 'for --method percentile: the share of values the range covers, in (0, 100] (default 99.999)' },
    'bias-correction': { type: 'boolean', describe: 'correct each Conv/Gemm channel bias for the mean output shift weight quantization causes, measured on calibration samples' },
    'max-drop': { type: 'number', describe: 'accuracy budget in top-1 points; the most sensitive ops go back to float until it holds, else nothing is written' },
    'calib-count': { type: 'number', describe: 'use at most N calibration samples' },
    'per-channel': { type: 'boolean', describe: 'per-channel weight scales (fbgemm default)' },
    'per-tensor': { type: 'boolean', describe: 'one weight scale per tensor (qnnpack default)' },
    'reduce-range': { type: 'boolean', describe: '7-bit weights (--no-reduce-range: 8-bit); default: on for x86 without VNNI' },
    activations: { type: 'string', choices: ['uint8', 'int8'], describe: 'activation type (default uint8: fusions survive residual branches on x86)' },
    bins: { type: 'number', describe: 'histogram bins for histogram-based methods (default 2048)' },
    exclude: { type: 'string', array: true, default: [], describe: 'node names to keep in float (repeat or list)' },
    threads: { type: 'number', describe: 'ONNX Runtime intra-op threads for calibration (default: all cores)' },
    json: { type: 'boolean', default: false, describe: 'print the result (or error) as one JSON object' },
    ...(o.calibLabels ? { labels: { type: 'string' as const, describe: 'class labels (.npy, one per calibration sample): auto and --max-drop score by top-1 accuracy instead of agreement with fp32' } } : {}),
  } as const;
}

/**
 * yargs check: a model and its data come either from files (--model and `dataFlag`) or from the
 * store (--model-name, with --from-store where the command asks for it).
 */
export function needsModel(dataFlag: '--calib' | '--data', fromStoreFlag = true) {
  return (argv: Record<string, unknown>): true => {
    const named = argv['model-name'] !== undefined;
    if (fromStoreFlag && Boolean(argv['from-store']) !== named) throw new Error('--from-store and --model-name go together');
    if (named && argv.model !== undefined) throw new Error('give --model FILE or --model-name NAME, not both');
    if (!named && argv.model === undefined) throw new Error('Missing required argument: model (or --from-store --model-name NAME)');
    if (!named && argv[dataFlag.slice(2)] === undefined && dataFlag === '--calib') throw new Error(`Missing required argument: ${dataFlag.slice(2)}`);
    return true;
  };
}

export function quantizeCommand(y: Argv): Argv {
  return y.command(
    'quantize',
    'Convert a float32 ONNX model to int8 (post-training static quantization)',
    (b) =>
      b
        .usage(
          'edgeq quantize --model in.onnx --calib x.npy --out out.onnx [options]\n\n' +
            'Folds BatchNorm into convolutions, calibrates activation ranges by running the model on\n' +
            'the .npy samples (leading axis = samples; float32 or uint8, C order), and writes a QDQ\n' +
            'model that ONNX Runtime runs with int8 kernels. Reports which ops really run in int8.',
        )
        .options(quantizeOptions({ calibLabels: true }))
        .conflicts('per-channel', 'per-tensor')
        .check(needsModel('--calib'))
        .demandOption('out')
        .example('edgeq quantize --model m.onnx --calib calib.npy --out m.int8.onnx', 'convert with the profile this CPU suggests')
        .example('edgeq quantize --model m.onnx --calib images=a.npy --calib mask=b.npy --out q.onnx --json', 'a two-input model, JSON result'),
    async (argv) => {
      await runQuantize(argv as unknown as QuantizeArgs);
    },
  );
}

/**
 * The quantize() options the flags and the config file ask for (flags over the config file over
 * the profile's own values), and why this profile.
 */
export function quantizeRequest(args: QuantizeArgs, onProgress?: QuantizeOptions['onProgress']): { options: QuantizeOptions; reason: string } {
  const count = positiveInt(args['calib-count'], '--calib-count');
  positiveInt(args.threads, '--threads');
  const cfg = args.config ? loadConfig(args.config).quantize : {};
  const profileName = args.profile ?? cfg.profile ?? 'auto';
  let profile;
  let reason;
  if (profileName === 'auto') ({ profile, reason } = chooseProfile(localCpu()));
  else if (isProfileName(profileName)) {
    profile = profileWith(profileName);
    reason = args.profile ? `--profile ${profileName}` : `profile ${profileName} from ${args.config}`;
  } else throw new EdgeqError('E_ARGUMENT', `unknown profile ${profileName}`);
  if (cfg.perChannel !== undefined) profile.perChannel = cfg.perChannel;
  if (cfg.reduceRange !== undefined) profile.reduceRange = cfg.reduceRange;
  if (cfg.activations) profile.activations = cfg.activations;
  if (cfg.bins !== undefined) profile.bins = cfg.bins;
  if (args['per-channel']) profile.perChannel = true;
  if (args['per-tensor']) profile.perChannel = false;
  if (args['reduce-range'] !== undefined) profile.reduceRange = args['reduce-range'];
  if (args.activations === 'uint8' || args.activations === 'int8') profile.activations = args.activations;
  if (args.bins !== undefined) {
    if (!Number.isInteger(args.bins) || args.bins < 16 || args.bins > 65536) throw new EdgeqError('E_ARGUMENT', `--bins must be a whole number from 16 to 65536, got ${args.bins}`);
    profile.bins = args.bins;
  }
  const options: QuantizeOptions = {
    model: args.model!,
    calib: parseInputFiles(args.calib!, '--calib'),
    out: args.out,
    profile,
    method: (args.method ?? cfg.method) as CalibrationMethod | 'auto' | undefined,
    percentile: args.percentile ?? cfg.percentile,
    labels: args.labels,
    maxDrop: args['max-drop'] ?? cfg.maxDrop,
    biasCorrection: args['bias-correction'] ?? cfg.biasCorrection,
    calibCount: count,
    exclude: args.exclude.flatMap((e) => e.split(',')).filter((e) => e),
    threads: args.threads,
    onProgress,
  };
  return { options, reason };
}

/**
 * With --from-store: the registered model's fp32 file and its calibration split as .npy files
 * (labels too when every sample has one); `run` gets the arguments rewritten to point at them.
 */
export async function withStoreData<T>(args: QuantizeArgs, want: { calibration?: boolean; holdout?: boolean }, run: (args: QuantizeArgs, data?: StoreData) => Promise<T>): Promise<T> {
  const name = args['model-name'];
  if (!name) return run(args);
  const data = withStoreSync({ 'state-dir': args['state-dir'], config: args.config, json: args.json }, ({ store }) => storeData(store, name, want));
  try {
    const calib = data.calibration;
    return await run({
      ...args,
      model: data.fp32.path,
      calib: calib ? [...calib.files].map(([n, p]) => `${n}=${p}`) : args.calib,
      labels: args.labels ?? calib?.labels,
    }, data);
  } finally {
    data.cleanup();
  }
}

export async function runQuantize(args: QuantizeArgs): Promise<void> {
  const progress = progressLine(!args.json);
  try {
    const result = await withStoreData(args, { calibration: true }, (a) => {
      const { options } = quantizeRequest(a, (stage, done, total) => progress.update(stage === 'calibrate' ? 'calibrating' : 'trying candidates', done, total));
      return quantize(options);
    });
    progress.done();
    if (args.json) printJson(result);
    else printSummary(result);
  } catch (e) {
    progress.done();
    reportError(e, args.json);
  }
}

function ops(rec: Record<string, number>): string {
  const e = Object.entries(rec).sort((a, b) => b[1] - a[1]);
  return e.length ? e.map(([k, v]) => `${k}×${v}`).join(', ') : 'none';
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

function printSummary(r: QuantizeResult): void {
  const lines = [
    `wrote ${r.outPath}`,
    `  profile ${r.profile} (${r.perChannel ? 'per-channel' : 'per-tensor'} weights${r.reduceRange ? ', reduce_range' : ''}), ${r.method} ranges, ${r.calibCount} calibration samples`,
    `  size ${formatBytes(r.sizeBytes.fp32)} → ${formatBytes(r.sizeBytes.int8)} (${pct(r.sizeBytes.int8 / r.sizeBytes.fp32)})`,
    `  quantized ${r.nodes.quantized} of ${r.nodes.total} nodes; folded ${r.foldedBatchNorms} BatchNorm, absorbed ${r.absorbedActivations} activations`,
    `  int8 in ORT: ${ops(r.int8Ops)}`,
    `  float in ORT: ${ops(r.floatOps)}`,
    `  time ${(r.timingsMs.total / 1000).toFixed(2)} s (calibrate ${(r.timingsMs.calibrate / 1000).toFixed(2)} s)`,
  ];
  if (r.heldOut) {
    const h = r.heldOut;
    lines.push(`  held-out ${h.samples} samples: ${h.metric === 'top1' ? `top-1 ${pct(h.fp32 ?? 0)} → ${pct(h.int8.accuracy ?? 0)}` : `agreement with fp32 ${pct(h.int8.agreement)}`}, SQNR ${h.int8.sqnrDb.toFixed(1)} dB, drop ${h.dropPoints} points`);
  }
  if (r.candidates) {
    lines.push('  candidates (best first):');
    for (const c of r.candidates) {
      lines.push(`    ${c.method.padEnd(10)} ${c.perChannel ? 'per-channel' : 'per-tensor '}  ${c.accuracy !== undefined ? `top-1 ${pct(c.accuracy)}  ` : ''}agreement ${pct(c.agreement)}  SQNR ${c.sqnrDb.toFixed(1)} dB`);
    }
  }
  if (r.fallback?.length) lines.push(`  kept in float for the accuracy budget: ${r.fallback.map((f) => `${f.node} (${f.opType}, ${f.sqnrDb} dB)`).join(', ')}`);
  if (r.biasCorrection) lines.push(`  bias correction on ${r.biasCorrection.length} ops (largest shift ${Math.max(0, ...r.biasCorrection.map((b) => b.maxShift))})`);
  for (const w of r.warnings) lines.push(`  warning: ${w}`);
  process.stdout.write(lines.join('\n') + '\n');
}
