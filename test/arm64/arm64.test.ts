/**
 * The ARM64 checks, run by `npm run test:arm64` (tools/test-arm64.sh: an arm64 Node.js under
 * QEMU user-mode emulation on an x86 machine) and on real ARM64 hardware: `edgeq detect` reports
 * arm64 and chooses qnnpack, and the fixture CNN quantized there keeps the accuracy budget
 * (top-1 drop of at most 1 point, the promotion gate's default). Emulation is 100–400× slower,
 * so the sample counts are small. Skipped on other architectures.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { DEFAULT_BUDGET } from '../../agent/promotion.js';
import { readNpy, writeNpy } from '../../quant/npy.js';
import { CLI, FMNIST, tempDir } from '../helpers/fixtures.js';

const arm = process.arch === 'arm64';
const armTest = arm ? test.serial : (title: string) => test.skip(`${title} — skipped: not arm64 (${process.arch}); npm run test:arm64 runs it under QEMU`, () => {});

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20 * 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

armTest('arm64: edgeq detect reports arm64 with NEON and chooses qnnpack', (t) => {
  const r = cli(['detect', '--json']);
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { arch: string; model: string; flags: string[]; isa: Record<string, boolean>; profile: { name: string }; reason: string };
  t.log(`detect: arch ${j.arch}, model ${j.model}, flags ${j.flags.join(' ')}, profile ${j.profile.name} (${j.reason})`);
  t.is(j.arch, 'arm64');
  t.true(j.isa.neon);
  t.is(j.profile.name, 'qnnpack');
});

armTest('arm64: the fixture CNN quantized here (qnnpack) keeps the accuracy budget', (t) => {
  const dir = tempDir(t, 'edgeq-arm64-');
  const n = 500;
  const x = readNpy(FMNIST.test);
  const y = readNpy(FMNIST.labels);
  const xs = join(dir, 'x.npy');
  const ys = join(dir, 'y.npy');
  writeNpy(xs, (x.data as Float32Array).slice(0, n * 784), [n, 1, 28, 28]);
  writeNpy(ys, (y.data as BigInt64Array).slice(0, n), [n]);
  const out = join(dir, 'int8.onnx');
  const q = cli(['quantize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--calib-count', '64', '--out', out, '--json']);
  t.is(q.status, 0, q.stderr);
  const qj = JSON.parse(q.stdout) as { profile: string; method: string; int8Ops: unknown; sizeBytes: { fp32: number; int8: number } };
  t.is(qj.profile, 'qnnpack');
  t.true(qj.sizeBytes.int8 < qj.sizeBytes.fp32);
  const e = cli(['eval', '--model', FMNIST.model, '--compare', out, '--data', xs, '--labels', ys, '--json']);
  t.is(e.status, 0, e.stderr);
  const ej = JSON.parse(e.stdout) as { samples: number; model: { top1: number }; compare: { top1: number }; agreement: number };
  const drop = Math.round((ej.model.top1 - ej.compare.top1) * 1e4) / 100;
  t.log(`int8 (${qj.profile}, ${qj.method}) on ${ej.samples} samples: top-1 fp32 ${ej.model.top1}, int8 ${ej.compare.top1}, drop ${drop} points, agreement ${ej.agreement}`);
  t.is(ej.samples, n);
  t.true(drop <= DEFAULT_BUDGET.maxDropPoints, `drop ${drop} points > budget ${DEFAULT_BUDGET.maxDropPoints}`);
});
