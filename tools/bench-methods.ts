/**
 * `npm run bench:methods`: every calibration method × profile × weight granularity on both
 * Fashion-MNIST fixtures, bias correction, plus auto and auto with a 0.5-point budget; writes
 * the methods section of bench/RESULTS.md. Accuracy is measured on the 1000 test images, never seen in calibration.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { writeSection } from './results-md.js';
import { join, resolve } from 'node:path';
import { chooseProfile, localCpu } from '../agent/detect.js';
import { accuracy, agreement, argmaxRows, firstOutput } from '../quant/eval.js';
import { METHODS, profileWith, quantize, type Profile, type QuantizeResult } from '../quant/index.js';
import { NpyFile, readNpy } from '../quant/npy.js';
import { sqnrDb } from '../quant/pipeline.js';

const ROOT = resolve('.');
const OUT = join(ROOT, 'bench/models/methods');
const DATA = join(ROOT, 'test/fixtures/fmnist');
const FIXTURES = [
  { name: 'fixture CNN (residual, BatchNorm)', model: join(DATA, 'model.onnx') },
  { name: 'fixture MobileNetV2-style (depthwise, ReLU6)', model: join(ROOT, 'test/fixtures/fmnist-mobilenet/model.onnx') },
];

interface Row {
  label: string;
  top1: number;
  agreement: number;
  sqnrDb: number;
  ms: number;
  result: QuantizeResult;
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

async function scores(model: string): Promise<{ data: Float32Array; rows: number }> {
  const f = NpyFile.open(join(DATA, 'test.npy'));
  try {
    return await firstOutput(model, new Map([['', f]]), f.count, { batch: 100 });
  } finally {
    f.close();
  }
}

async function main(): Promise<void> {
  mkdirSync(OUT, { recursive: true });
  const labels = readNpy(join(DATA, 'test_labels.npy')).data as BigInt64Array;
  const cpu = chooseProfile(localCpu());
  const profiles: Profile[] = [cpu.profile, profileWith(cpu.profile.name === 'fbgemm' ? 'qnnpack' : 'fbgemm')];
  const lines = [
    '## Calibration methods × profiles × granularity',
    '',
    `Produced by \`npm run bench:methods\` (${new Date().toISOString().slice(0, 10)}). 500 calibration images (calib.npy, train split), accuracy on the 1000 test images (test.npy). SQNR of the logits, int8 vs fp32, over the test images. This CPU: ${cpu.reason}.`,
    '',
  ];
  for (const fx of FIXTURES) {
    if (!existsSync(fx.model)) {
      lines.push(`### ${fx.name}`, '', `Skipped: ${fx.model} is missing.`, '');
      continue;
    }
    const ref = await scores(fx.model);
    const refTop1 = argmaxRows(ref.data, ref.rows);
    const rows: Row[] = [];
    const run = async (label: string, profile: Profile, extra: Partial<Parameters<typeof quantize>[0]>) => {
      const out = join(OUT, `${rows.length}.onnx`);
      const r = await quantize({ model: fx.model, calib: new Map([['', join(DATA, 'calib.npy')]]), out, profile, ...extra });
      const s = await scores(out);
      const top1 = argmaxRows(s.data, s.rows);
      rows.push({ label, top1: accuracy(top1, labels), agreement: agreement(refTop1, top1), sqnrDb: sqnrDb(ref.data, s.data), ms: r.timingsMs.total, result: r });
      process.stderr.write(`${fx.name}: ${label}: ${pct(rows[rows.length - 1].top1)}\n`);
    };
    for (const profile of profiles) {
      for (const method of METHODS) {
        for (const perChannel of [true, false]) {
          const prof = { ...profile, perChannel };
          await run(`${profile.name}${profile.reduceRange ? ' (reduce_range)' : ''} · ${method} · ${perChannel ? 'per-channel' : 'per-tensor'}`, prof, { method });
        }
      }
    }
    const singles = rows.slice();
    for (const perChannel of [true, false]) {
      await run(`${cpu.profile.name} · histogram · ${perChannel ? 'per-channel' : 'per-tensor'} + bias correction`, { ...cpu.profile, perChannel }, { method: 'histogram', biasCorrection: true });
    }
    await run(`auto (${cpu.profile.name})`, cpu.profile, { method: 'auto' });
    try {
      await run(`auto --max-drop 0.5 (${cpu.profile.name})`, cpu.profile, { method: 'auto', maxDrop: 0.5 });
    } catch (e) {
      lines.push(`auto --max-drop 0.5: ${(e as Error).message}`, '');
    }
    const fp32Top1 = accuracy(refTop1, labels);
    const hist = singles.find((r) => r.label.startsWith(`${cpu.profile.name}`) && r.label.includes('· histogram ·') && r.result.perChannel === cpu.profile.perChannel)!;
    lines.push(`### ${fx.name}`, '', `fp32 top-1: ${pct(fp32Top1)}`, '', '| profile · method · weights | int8 top-1 | Δ points | agreement | SQNR dB | time |', '|---|---|---|---|---|---|');
    for (const r of rows) {
      lines.push(`| ${r.label} | ${pct(r.top1)} | ${((r.top1 - fp32Top1) * 100).toFixed(1)} | ${pct(r.agreement)} | ${r.sqnrDb.toFixed(1)} | ${(r.ms / 1000).toFixed(1)} s |`);
    }
    // The best single combination over both profiles: auto must be within 0.2 points of it.
    const best = singles.reduce((a, b) => (b.top1 > a.top1 ? b : a));
    const auto = rows.find((r) => r.label.startsWith('auto ('));
    if (auto) {
      const chosen = `${auto.result.method} · ${auto.result.perChannel ? 'per-channel' : 'per-tensor'}`;
      lines.push(
        '',
        `auto chose ${chosen} on ${auto.result.heldOut?.samples} held-out calibration images; on the test set it is ${((auto.top1 - best.top1) * 100).toFixed(1)} points from the best single combination (${best.label}, ${pct(best.top1)}), and took ${(auto.ms / hist.ms).toFixed(2)}× the time of one histogram run (${(auto.ms / 1000).toFixed(1)} s vs ${(hist.ms / 1000).toFixed(1)} s).`,
      );
    }
    const budget = rows.find((r) => r.label.startsWith('auto --max-drop'));
    if (budget) {
      const fb = budget.result.fallback ?? [];
      lines.push(`auto --max-drop 0.5: held-out drop ${budget.result.heldOut?.dropPoints} points, test-set drop ${((fp32Top1 - budget.top1) * 100).toFixed(1)} points; ${fb.length ? `kept in float: ${fb.map((f) => `${f.node} (${f.opType}, loses ${f.lossDb} dB)`).join(', ')}` : 'no op needed to go back to float'}.`);
    }
    lines.push('');
  }
  writeSection(join(ROOT, 'bench/RESULTS.md'), 'methods', lines.join('\n'));
  process.stderr.write('wrote the methods section of bench/RESULTS.md\n');
}

await main();
