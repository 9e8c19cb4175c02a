import test from 'ava';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { countArg, parseInputFiles } from '../../agent/args.js';
import { parseShapeArgs } from '../../agent/commands/bench.js';
import { EdgeqError } from '../../quant/errors.js';
import { writeModel } from '../../quant/onnx/model.js';
import { CLI, FMNIST, ROOT, tempDir } from '../helpers/fixtures.js';
import { buildModel, floatInput, makeNode } from '../helpers/models.js';

function edgeq(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', cwd: ROOT });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('CLI: bench --json prints the result object for the fixture CNN with --data', (t) => {
  const r = edgeq(['bench', '--model', FMNIST.model, '--data', FMNIST.test, '--batch', '4', '--runs', '12', '--warmup', '2', '--json']);
  t.is(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout);
  t.is(res.runs, 12);
  t.is(res.warmup, 2);
  t.is(res.batch, 4);
  t.is(res.threads, 1);
  t.is(res.spin, true);
  t.is(res.sizeBytes, statSync(FMNIST.model).size);
  t.true(res.minMs <= res.p50Ms && res.p50Ms <= res.p90Ms && res.p90Ms <= res.p99Ms);
  t.true(typeof res.peakRssBytes === 'number' && res.peakRssBytes > 10 * 2 ** 20);
  t.deepEqual(res.inputs, [{ name: 'input', shape: [4, 1, 28, 28], dtype: 'float32', source: 'data' }]);
});

test('CLI: bench prints an aligned table', (t) => {
  const r = edgeq(['bench', '--model', FMNIST.model, '--runs', '5', '--warmup', '0', '--threads', '2', '--no-spin']);
  t.is(r.status, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  t.deepEqual(lines.map((l) => l.slice(0, 12).trim()), ['model', 'size', 'load', 'p50', 'p90', 'p99', 'mean', 'min', 'throughput', 'peak RSS', 'threads', 'batch', 'inputs']);
  t.true(lines.every((l) => l[11] === ' ' && l[12] !== ' '), r.stdout);
  t.regex(r.stdout, /^p50 +\d+\.\d{3} ms$/m);
  t.regex(r.stdout, /^throughput +\d+(\.\d)? samples\/s$/m);
  t.regex(r.stdout, /^peak RSS +\d+\.\d MiB \(benchmark process/m);
  t.regex(r.stdout, /^threads +2, not spinning$/m);
  t.regex(r.stdout, /^batch +1 \(5 timed runs after 0 warm-up\)$/m);
  t.regex(r.stdout, /^inputs +input \[1, 1, 28, 28\] float32, random$/m);
  t.is(r.stderr, '');
});

test('CLI: a non-numeric --runs is a clear error with exit 1, as text or JSON', (t) => {
  const r = edgeq(['bench', '--model', FMNIST.model, '--runs', 'abc']);
  t.is(r.status, 1);
  t.is(r.stdout, '');
  t.is(r.stderr, 'edgeq: error: --runs must be a positive integer, got abc\n');
  const j = edgeq(['bench', '--model', FMNIST.model, '--runs', 'abc', '--json']);
  t.is(j.status, 1);
  t.deepEqual(JSON.parse(j.stdout), { ok: false, error: { code: 'E_ARGUMENT', message: '--runs must be a positive integer, got abc' } });
  for (const [flag, value, message] of [
    ['--warmup', '-1', '--warmup must be a whole number, 0 or more, got -1'],
    ['--threads', '1.5', '--threads must be a positive integer, got 1.5'],
    ['--batch', '0', '--batch must be a positive integer, got 0'],
    ['--runs', '', '--runs must be a positive integer, got nothing'],
  ]) {
    const e = edgeq(['bench', '--model', FMNIST.model, `${flag}=${value}`, '--json']);
    t.is(e.status, 1, `${flag}=${value}`);
    t.deepEqual(JSON.parse(e.stdout).error, { code: 'E_ARGUMENT', message });
  }
});

test('CLI: missing model file, missing --shape for a dynamic dimension, missing --model', (t) => {
  const dir = tempDir(t);
  const missing = edgeq(['bench', '--model', join(dir, 'missing.onnx')]);
  t.is(missing.status, 1);
  t.regex(missing.stderr, /^edgeq: error: file not found: .*missing\.onnx\n$/);
  t.is(JSON.parse(edgeq(['bench', '--model', join(dir, 'missing.onnx'), '--json']).stdout).error.code, 'E_FILE_NOT_FOUND');

  const model = join(dir, 'seq.onnx');
  writeModel(buildModel([makeNode('Relu', ['x'], ['y'], 'relu')], [floatInput('x', ['batch', 'seq', 8])], [floatInput('y', ['batch', 'seq', 8])], []), model);
  const noShape = edgeq(['bench', '--model', model, '--json']);
  t.is(noShape.status, 1);
  const err = JSON.parse(noShape.stdout).error;
  t.is(err.code, 'E_ARGUMENT');
  t.regex(err.message, /model input "x" \[batch, seq, 8\] has a dynamic dimension 1 \("seq"\): pass --shape x=1,<seq>,8/);
  const ok = edgeq(['bench', '--model', model, '--shape', 'x=3,16,8', '--runs', '3', '--warmup', '0', '--json']);
  t.is(ok.status, 0, ok.stderr);
  const res = JSON.parse(ok.stdout);
  t.is(res.batch, 3);
  t.deepEqual(res.inputs, [{ name: 'x', shape: [3, 16, 8], dtype: 'float32', source: 'random' }]);

  const usage = edgeq(['bench']);
  t.is(usage.status, 2);
  t.regex(usage.stderr, /Missing required argument: model/);
});

test('countArg, parseInputFiles, parseShapeArgs', (t) => {
  t.is(countArg('--runs', undefined), undefined);
  t.is(countArg('--runs', '42'), 42);
  t.is(countArg('--warmup', '0', 0), 0);
  const code = (f: () => unknown) => (t.throws(f) as EdgeqError).code;
  t.is(code(() => countArg('--runs', '1e3')), 'E_ARGUMENT');
  t.is(code(() => countArg('--runs', ['1', '2'])), 'E_ARGUMENT');
  t.is(code(() => countArg('--runs', '0')), 'E_ARGUMENT');

  t.deepEqual([...parseInputFiles(['a.npy'], '--data')], [['', 'a.npy']]);
  t.deepEqual([...parseInputFiles(['ids=a.npy', 'mask=./b.npy'], '--data')], [['ids', 'a.npy'], ['mask', './b.npy']]);
  t.deepEqual([...parseInputFiles(['./dir=x/a.npy'], '--data')], [['', './dir=x/a.npy']]);
  t.is(code(() => parseInputFiles(['a.npy', 'b.npy'], '--data')), 'E_ARGUMENT');
  t.is(code(() => parseInputFiles(['a.npy', 'x=b.npy'], '--data')), 'E_ARGUMENT');
  t.is(code(() => parseInputFiles(['x='], '--data')), 'E_ARGUMENT');

  t.deepEqual([...parseShapeArgs(['input=1,3,224,224', 'mask=1x128'])], [['input', [1, 3, 224, 224]], ['mask', [1, 128]]]);
  t.deepEqual([...parseShapeArgs(['2,5'])], [['', [2, 5]]]);
  t.is(code(() => parseShapeArgs(['x=1,0'])), 'E_ARGUMENT');
  t.is(code(() => parseShapeArgs(['x=1,,2'])), 'E_ARGUMENT');
  t.is(code(() => parseShapeArgs(['=1,2'])), 'E_ARGUMENT');
  t.is(code(() => parseShapeArgs(['x=1', 'x=2'])), 'E_ARGUMENT');
  t.regex((t.throws(() => parseShapeArgs(['x=1,a'])) as Error).message, /--shape x=1,a: the dimensions must be positive integers separated by commas/);
});
