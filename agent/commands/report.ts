/** `edgeq report FILE`: a run report (edgeq.report/v1) as a terminal table. */
import type { Argv } from 'yargs';
import { EdgeqError } from '../../quant/errors.js';
import { readJsonFile } from '../json-file.js';
import { parseReport, reportJsonSchema, type Report } from '../protocol/report.js';
import { formatBytes, printJson, reportError } from '../output.js';
import { table } from './eval.js';

export interface ReportArgs {
  file?: string;
  schema: boolean;
  json: boolean;
}

export function reportCommand(y: Argv): Argv {
  return y.command(
    'report [file]',
    'Show a run report (the JSON edgeq optimize writes and the daemon sends) as a table',
    (b) =>
      b
        .usage(
          'edgeq report FILE [--json]\n' +
            'edgeq report --schema\n\n' +
            'Checks FILE against the report schema (edgeq.report/v1) and prints fp32 vs int8 side by\n' +
            'side: size, accuracy, latency, memory, and how the model was quantized. --schema prints\n' +
            'the JSON Schema, for tools that consume reports.',
        )
        .positional('file', { type: 'string', describe: 'a report JSON file' })
        .option('schema', { type: 'boolean', default: false, describe: 'print the report JSON Schema and exit' })
        .option('json', { type: 'boolean', default: false, describe: 'print the checked report as JSON' })
        .example('edgeq report run.json', 'the comparison as a table'),
    async (argv) => {
      runReport(argv as unknown as ReportArgs);
    },
  );
}

export function readReport(path: string): Report {
  const parsed = parseReport(readJsonFile(path, 'E_REPORT_INVALID'));
  if (!parsed.ok) throw new EdgeqError('E_REPORT_INVALID', `${path} is not a valid edgeq report: ${parsed.error}`);
  return parsed.value;
}

export function runReport(args: ReportArgs): void {
  try {
    if (args.schema) return printJson(reportJsonSchema());
    if (!args.file) throw new EdgeqError('E_ARGUMENT', 'name a report file (edgeq report FILE), or ask for --schema');
    const r = readReport(args.file);
    if (args.json) printJson(r);
    else process.stdout.write(renderReport(r));
  } catch (e) {
    reportError(e, args.json);
  }
}

const pct = (x: number | undefined) => (x === undefined ? '—' : `${(100 * x).toFixed(1)}%`);
const msf = (x: number) => `${x < 10 ? x.toFixed(3) : x.toFixed(1)} ms`;
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
function drop(points: number | undefined): string {
  if (points === undefined) return '—';
  if (Math.abs(points) < 0.05) return 'no change';
  return `${points > 0 ? '-' : '+'}${Math.abs(points).toFixed(1)} points`;
}

export function renderReport(r: Report): string {
  const q = r.quantization;
  const a = r.accuracy;
  const l = r.latency;
  const head = [
    `${r.model.name} → ${r.int8.name}   (${r.createdAt}, edgeq ${r.agent.version})`,
    `device   ${r.device.id ? `${r.device.id} · ` : ''}${r.device.hostname} · ${r.device.arch} · ${r.device.cpu} · ${r.device.cores} cores · ${r.device.isa.join(' ') || 'no int8 ISA extensions'}`,
    `profile  ${q.profile} (${q.perChannel ? 'per-channel' : 'per-tensor'} weights${q.reduceRange ? ', reduce_range' : ''}, ${q.activations} activations), ${q.method} ranges from ${q.calibrationSamples} samples${q.biasCorrection ? ', bias correction' : ''}`,
    `why      ${q.reason}`,
  ];
  if (q.keptFloat.length) head.push(`float    kept in float for the accuracy budget: ${q.keptFloat.join(', ')}`);
  if (r.promotion) {
    const p = r.promotion;
    head.push(`gate     ${p.promoted ? 'int8 promoted' : 'int8 not promoted'} (active version v${p.activeVersion}): ${p.checks.map((c) => `${c.ok ? 'ok' : 'FAILED'} ${c.check}: ${c.detail}`).join('; ')}`);
  }
  const rows = [
    ['', 'fp32', 'int8', 'int8 vs fp32'],
    ['size', formatBytes(r.model.sizeBytes), formatBytes(r.int8.sizeBytes), pct(r.sizeRatio)],
  ];
  if (a.fp32Top1 !== undefined) rows.push([`top-1 (${a.samples} ${a.source === 'eval-data' ? 'eval' : 'calibration'} samples)`, pct(a.fp32Top1), pct(a.int8Top1), drop(a.dropPoints)]);
  if (a.agreement !== undefined) rows.push(['top-1 agreement', '', pct(a.agreement), '']);
  rows.push(['output SQNR', '', a.sqnrDb === null ? 'exact' : `${a.sqnrDb.toFixed(1)} dB`, `cosine ${a.cosine.toFixed(5)}`]);
  rows.push([`latency p50 (batch ${l.batch}, ${l.threads} thread${l.threads > 1 ? 's' : ''})`, msf(l.fp32.p50Ms), msf(l.int8.p50Ms), `${ratio(l.fp32.p50Ms, l.int8.p50Ms)} faster`]);
  rows.push(['latency p99', msf(l.fp32.p99Ms), msf(l.int8.p99Ms), '']);
  rows.push(['throughput', `${l.fp32.throughput.toFixed(0)}/s`, `${l.int8.throughput.toFixed(0)}/s`, '']);
  rows.push(['session load', msf(l.fp32.loadMs), msf(l.int8.loadMs), '']);
  rows.push(['peak RSS', formatBytes(l.fp32.peakRssBytes), formatBytes(l.int8.peakRssBytes), '']);
  const ops = Object.entries(q.int8Ops).map(([k, v]) => `${k}×${v}`).join(', ') || 'none';
  const fops = Object.entries(q.floatOps).map(([k, v]) => `${k}×${v}`).join(', ') || 'none';
  const t = r.timingsMs;
  return [
    ...head,
    '',
    table(rows).trimEnd(),
    '',
    `ORT int8 ops  ${ops}`,
    `ORT float ops ${fops}`,
    `time          quantize ${(t.quantize / 1000).toFixed(1)} s, eval ${(t.eval / 1000).toFixed(1)} s, bench ${(t.bench / 1000).toFixed(1)} s, total ${(t.total / 1000).toFixed(1)} s`,
    '',
  ].join('\n');
}
