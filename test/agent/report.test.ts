/**
 * `edgeq optimize` and `edgeq report`: the run report is valid against its schema, and its
 * figures agree with the files and with independent measurements.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseReport, REPORT_SCHEMA, type Report } from '../../agent/protocol/report.js';
import { evaluate } from '../../quant/evaluate.js';
import { CLI, FMNIST, tempDir } from '../helpers/fixtures.js';

function edgeq(...args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

test('optimize writes a valid report whose figures match the files and an independent eval', async (t) => {
  const dir = tempDir(t);
  const out = join(dir, 'm.int8.onnx');
  const reportPath = join(dir, 'run.json');
  const r = edgeq('optimize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--out', out, '--data', FMNIST.test, '--labels', FMNIST.labels, '--report', reportPath, '--runs', '20', '--warmup', '2', '--json');
  t.is(r.status, 0, r.stderr);
  const printed = JSON.parse(r.stdout) as Report;
  const saved = JSON.parse(readFileSync(reportPath, 'utf8')) as unknown;
  t.deepEqual(printed, saved);
  const parsed = parseReport(saved);
  t.true(parsed.ok, parsed.ok ? '' : parsed.error);
  const rep = printed;
  t.is(rep.schema, REPORT_SCHEMA);
  t.is(rep.model.sha256, sha(FMNIST.model));
  t.is(rep.int8.sha256, sha(out));
  t.is(rep.model.sizeBytes, statSync(FMNIST.model).size);
  t.is(rep.int8.sizeBytes, statSync(out).size);
  t.true(rep.sizeRatio > 0.2 && rep.sizeRatio < 0.35);
  t.is(rep.latency.fp32.runs, 20);
  t.true(rep.latency.int8.peakRssBytes > 0 && rep.latency.fp32.peakRssBytes > 0);
  t.true(Math.abs(rep.latency.speedup - rep.latency.fp32.p50Ms / rep.latency.int8.p50Ms) < 0.01);
  t.deepEqual(rep.quantization.floatOps, {});
  const ev = await evaluate({ model: FMNIST.model, compare: out, data: new Map([['', FMNIST.test]]), labels: FMNIST.labels });
  t.is(rep.accuracy.source, 'eval-data');
  t.is(rep.accuracy.samples, 1000);
  t.is(rep.accuracy.fp32Top1, ev.model.top1);
  t.is(rep.accuracy.int8Top1, ev.compare!.top1);
  t.is(rep.accuracy.agreement, ev.agreement);

  const text = edgeq('report', reportPath);
  t.is(text.status, 0, text.stderr);
  t.regex(text.stdout, /latency p50 \(batch 1, 1 thread\)/);
  t.regex(text.stdout, /top-1 \(1000 eval samples\)\s+93\.0%/);
  const again = edgeq('report', reportPath, '--json');
  t.deepEqual(JSON.parse(again.stdout), saved);
});

test('without --data the report says its accuracy comes from the calibration samples', (t) => {
  const dir = tempDir(t);
  const r = edgeq('optimize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--out', join(dir, 'q.onnx'), '--runs', '3', '--warmup', '0', '--json');
  t.is(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout) as Report;
  t.is(rep.accuracy.source, 'calibration-data');
  t.is(rep.accuracy.fp32Top1, undefined);
  t.true(rep.accuracy.agreement! > 0.9);
});

test('report: bad files are refused with one line that names the problem', (t) => {
  const dir = tempDir(t);
  const good = { schema: REPORT_SCHEMA };
  const files: Array<[string, string, RegExp]> = [
    ['notjson.json', '{ nope', /is not valid JSON/],
    ['v2.json', JSON.stringify({ ...good, schema: 'edgeq.report/v2' }), /schema "edgeq\.report\/v2" is not one this agent reads/],
    ['partial.json', JSON.stringify(good), /is not a valid edgeq report: id: /],
  ];
  for (const [name, body, message] of files) {
    const p = join(dir, name);
    writeFileSync(p, body);
    const r = edgeq('report', p, '--json');
    t.is(r.status, 1);
    const e = JSON.parse(r.stdout) as { ok: boolean; error: { code: string; message: string } };
    t.is(e.error.code, 'E_REPORT_INVALID');
    t.regex(e.error.message, message);
    const text = edgeq('report', p);
    t.is(text.stderr.trim().split('\n').length, 1);
  }
  t.is(edgeq('report', join(dir, 'missing.json'), '--json').status, 1);
});

test('report --schema prints the JSON Schema; optimize refuses bad flags and writes nothing', (t) => {
  const s = edgeq('report', '--schema');
  t.is(s.status, 0);
  const schema = JSON.parse(s.stdout) as { $schema: string; properties: Record<string, unknown>; required: string[] };
  t.truthy(schema.$schema);
  t.true(schema.required.includes('latency') && schema.required.includes('accuracy'));
  const dir = tempDir(t);
  const out = join(dir, 'x.onnx');
  for (const bad of [['--runs', 'many'], ['--labels', FMNIST.labels], ['--bench-threads', '0']]) {
    const r = edgeq('optimize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--out', out, '--report', join(dir, 'r.json'), ...bad, '--json');
    t.is(r.status, 1, bad.join(' '));
    t.is((JSON.parse(r.stdout) as { error: { code: string } }).error.code, 'E_ARGUMENT');
    t.false(existsSync(out));
    t.false(existsSync(join(dir, 'r.json')));
  }
});
