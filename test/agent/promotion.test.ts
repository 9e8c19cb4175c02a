/**
 * The promotion gate: the int8 model becomes active only when its accuracy drop is within the
 * budget and it is faster than fp32; each condition is forced in turn on the fixture, and the
 * decision itself is checked on the boundary cases.
 */
import test from 'ava';
import { optimizeFromStore } from '../../agent/optimize.js';
import { promotionDecision } from '../../agent/promotion.js';
import { parseReport, type Report } from '../../agent/protocol/report.js';
import { registerModel } from '../../agent/models.js';
import { importNpy } from '../../agent/capture/import.js';
import { Store } from '../../agent/store/index.js';
import { storeFile } from '../../agent/state.js';
import { profileWith } from '../../quant/index.js';
import { FMNIST, tempDir } from '../helpers/fixtures.js';

async function fixtureStore(t: Parameters<typeof tempDir>[0]) {
  const dir = tempDir(t);
  const store = Store.open(storeFile(dir));
  t.teardown(() => store.close());
  await registerModel(store, dir, 'fmnist', FMNIST.model);
  importNpy(store, 'fmnist', new Map([['', FMNIST.test]]), { labels: FMNIST.labels, source: 'test' });
  return { dir, store };
}

const quick = { runs: 5, warmup: 1, reason: 'test' };

test('the gate promotes int8, or keeps fp32 when it is slower or loses more than the budget', async (t) => {
  const { dir, store } = await fixtureStore(t);
  const profile = profileWith('fbgemm');

  // Latency forced to fail: int8 would have to be a million times faster.
  const slow = await optimizeFromStore(store, dir, 'fmnist', { ...quick, quantize: { profile }, budget: { maxDropPoints: 100, minSpeedup: 1e6 } });
  t.true(parseReport(slow.report).ok);
  t.false(slow.report.promotion!.promoted);
  t.deepEqual(slow.report.promotion!.checks.map((c) => [c.check, c.ok]), [['accuracy', true], ['latency', false]]);
  t.is(store.activeVersion('fmnist')!.kind, 'fp32');
  t.is(slow.report.promotion!.activeVersion, 1);

  // Accuracy forced to fail: ranges cut at the 1st percentile wreck the model.
  const bad = await optimizeFromStore(store, dir, 'fmnist', { ...quick, quantize: { profile, method: 'percentile', percentile: 1 }, budget: { maxDropPoints: 1, minSpeedup: 0 } });
  t.false(bad.report.promotion!.promoted);
  t.is(bad.report.promotion!.checks[0].check, 'accuracy');
  t.false(bad.report.promotion!.checks[0].ok, bad.report.promotion!.checks[0].detail);
  t.true(bad.report.accuracy.dropPoints! > 1);
  t.is(store.activeVersion('fmnist')!.version, 1);

  // Both within the budget: promoted, the int8 version is active.
  const good = await optimizeFromStore(store, dir, 'fmnist', { ...quick, quantize: { profile }, budget: { maxDropPoints: 1, minSpeedup: 0 } });
  t.true(good.report.promotion!.promoted, JSON.stringify(good.report.promotion));
  const active = store.activeVersion('fmnist')!;
  t.is(active.kind, 'int8');
  t.is(active.version, good.int8Version);
  t.is(good.report.promotion!.activeVersion, good.int8Version);

  // --no-promote registers without deciding.
  const plain = await optimizeFromStore(store, dir, 'fmnist', { ...quick, quantize: { profile }, promote: false });
  t.is(plain.report.promotion, undefined);
  t.is(store.activeVersion('fmnist')!.version, good.int8Version);
  // Four optimizes made four int8 versions; the default keeps the newest 3 and the fp32 parent.
  t.deepEqual(store.listVersions('fmnist').map((v) => `${v.kind} v${v.version}`), ['fp32 v1', 'int8 v3', 'int8 v4', 'int8 v5']);

  // The decision on boundary figures, from a real report.
  const base = good.report;
  const with_ = (acc: Partial<Report['accuracy']>, speedup: number): Report => ({ ...base, accuracy: { ...base.accuracy, ...acc }, latency: { ...base.latency, speedup } });
  t.true(promotionDecision(with_({ dropPoints: 1 }, 1.01)).promoted, 'a drop equal to the budget passes');
  t.false(promotionDecision(with_({ dropPoints: 1.01 }, 2)).promoted);
  t.false(promotionDecision(with_({ dropPoints: 0 }, 1)).promoted, 'equal latency is not faster');
  t.true(promotionDecision(with_({ dropPoints: -0.5 }, 1.5)).promoted, 'int8 more accurate than fp32');
  const unlabelled = with_({ dropPoints: undefined, fp32Top1: undefined, int8Top1: undefined, agreement: 0.985 }, 2);
  const d = promotionDecision(unlabelled);
  t.false(d.promoted, 'without labels, 1.5 points of disagreement exceed the default 1-point budget');
  t.regex(d.checks[0].detail, /disagreement with fp32 1\.5 points/);
  t.true(promotionDecision(unlabelled, { maxDropPoints: 2 }).promoted);
});
