/** `edgeq optimize`: quantize, evaluate, benchmark both models, and write the run report. */
import type { Argv } from 'yargs';
import { EdgeqError } from '../../quant/errors.js';
import { writeFileAtomic } from '../../quant/onnx/model.js';
import { countArg, parseInputFiles } from '../args.js';
import { optimize, optimizeFromStore } from '../optimize.js';
import { printJson, progressLine, reportError } from '../output.js';
import { needsModel, quantizeOptions, quantizeRequest, type QuantizeArgs } from './quantize.js';
import { withStore } from './common.js';
import { renderReport } from './report.js';

export interface OptimizeArgs extends QuantizeArgs {
  data?: string[];
  'eval-labels'?: string;
  report?: string;
  'bench-threads'?: string;
  promote: boolean;
  'min-speedup'?: string;
  runs?: string;
  warmup?: string;
}

export function optimizeCommand(y: Argv): Argv {
  return y.command(
    'optimize',
    'Quantize, then compare fp32 and int8 on this device (accuracy, latency, size) and write the run report',
    (b) =>
      b
        .usage(
          'edgeq optimize --model in.onnx --calib x.npy --out out.onnx [--data test.npy --labels y.npy] [--report run.json] [options]\n\n' +
            'The whole job of the agent, from the command line: `edgeq quantize`, then `edgeq eval`\n' +
            'of fp32 against int8 (on --data, else on the calibration samples, which flatters int8:\n' +
            'the report says which), then `edgeq bench` of each model in its own process. The report\n' +
            '(edgeq.report/v1; `edgeq report FILE` shows it) is what the daemon sends to the fleet.',
        )
        .options(quantizeOptions({ calibLabels: false }))
        .conflicts('per-channel', 'per-tensor')
        .check(needsModel('--calib', false))
        .option('data', { type: 'string', array: true, describe: 'evaluation samples: FILE.npy, or NAME=FILE.npy per input (default: the calibration samples)' })
        .option('labels', { type: 'string', describe: 'class labels of the evaluation samples (.npy, one per sample)' })
        .option('promote', { type: 'boolean', default: true, describe: 'with --model-name: activate the int8 model if the promotion gate passes it (--no-promote: register it only)' })
        .option('min-speedup', { type: 'string', describe: 'promotion gate: fp32 p50 / int8 p50 must exceed this (default 1: int8 strictly faster); the accuracy budget is --max-drop (default 1 point)' })
        .option('report', { type: 'string', describe: 'write the run report (JSON) here, atomically' })
        .option('bench-threads', { type: 'string', default: '1', describe: 'ONNX Runtime threads for the latency measurement' })
        .option('runs', { type: 'string', default: '100', describe: 'timed runs per model' })
        .option('warmup', { type: 'string', default: '10', describe: 'untimed runs per model first' })
        .example('edgeq optimize --model m.onnx --calib calib.npy --out m.int8.onnx --data test.npy --labels y.npy --report run.json', 'the full comparison, saved'),
    async (argv) => {
      await runOptimize(argv as unknown as OptimizeArgs);
    },
  );
}

export async function runOptimize(args: OptimizeArgs): Promise<void> {
  const progress = progressLine(!args.json);
  try {
    if (args.labels && !args.data) throw new EdgeqError('E_ARGUMENT', '--labels labels the evaluation samples: give them with --data');
    const name = args['model-name'];
    if (name && (args.data || args.calib)) throw new EdgeqError('E_ARGUMENT', '--model-name takes calibration and evaluation samples from the store: drop --calib and --data');
    const { options, reason } = quantizeRequest({ ...args, labels: undefined, ...(name ? { model: '', calib: [], out: '' } : {}) });
    const common = {
      reason,
      benchThreads: countArg('--bench-threads', args['bench-threads']),
      runs: countArg('--runs', args.runs),
      warmup: countArg('--warmup', args.warmup, 0),
      onStage: (stage: 'quantize' | 'eval' | 'bench', done: number, total: number) => progress.update(stage === 'quantize' ? 'calibrating' : stage === 'eval' ? 'evaluating' : 'benchmarking', done, total),
    };
    let report;
    let note = '';
    if (name) {
      const { model: _m, calib: _c, out: _o, ...quantize } = options;
      const minSpeedup = args['min-speedup'] === undefined ? undefined : Number(args['min-speedup']);
      if (minSpeedup !== undefined && !(minSpeedup >= 0)) throw new EdgeqError('E_ARGUMENT', `--min-speedup must be a number, 0 or more, got ${args['min-speedup']}`);
      const budget = { ...(quantize.maxDrop !== undefined ? { maxDropPoints: quantize.maxDrop } : {}), ...(minSpeedup !== undefined ? { minSpeedup } : {}) };
      const o = await withStore(args, ({ store, stateDir, config }) => optimizeFromStore(store, stateDir, name, { ...common, quantize, promote: args.promote, budget, keepVersions: config?.deploy?.keepVersions }));
      report = o.report;
      const p = report.promotion;
      note = `run ${o.runId} recorded; int8 registered as ${name} v${o.int8Version}${p ? (p.promoted ? ', promoted: now active' : ', not promoted: fp32 stays active') : ' (not active)'}\n`;
    } else {
      if (!args.out) throw new EdgeqError('E_ARGUMENT', '--out is required with --model (where to write the int8 model)');
      report = (await optimize({ ...common, quantize: options, data: args.data ? parseInputFiles(args.data, '--data') : undefined, labels: args.labels })).report;
    }
    progress.done();
    if (args.report) writeFileAtomic(args.report, new TextEncoder().encode(JSON.stringify(report, null, 2) + '\n'));
    if (args.json) printJson(report);
    else process.stdout.write(renderReport(report) + note + (args.report ? `report written to ${args.report}\n` : ''));
  } catch (e) {
    progress.done();
    reportError(e, args.json);
  }
}
