/**
 * The promotion gate: an int8 model becomes the active version only when it is measured better
 * on this device — its accuracy drop within the budget and its latency lower than fp32's (by at
 * least `minSpeedup`). Otherwise fp32 stays active and the report says which check failed.
 */
import type { Promotion, Report } from './protocol/report.js';

export interface GateBudget {
  /** Top-1 points int8 may lose: against labels when the report has them, else disagreement with fp32. Default 1. */
  maxDropPoints?: number;
  /** fp32 p50 / int8 p50 must be above this. Default 1 (int8 strictly faster). */
  minSpeedup?: number;
}

export const DEFAULT_BUDGET: Required<GateBudget> = { maxDropPoints: 1, minSpeedup: 1 };

const round2 = (x: number) => Math.round(x * 100) / 100;

/** The gate's decision for a report (the report itself is not changed). */
export function promotionDecision(report: Report, budget: GateBudget = {}): Pick<Promotion, 'promoted' | 'checks' | 'budget'> {
  const b = { ...DEFAULT_BUDGET, ...budget };
  const a = report.accuracy;
  const labelled = a.dropPoints !== undefined;
  const drop = labelled ? a.dropPoints! : a.agreement !== undefined ? round2((1 - a.agreement) * 100) : undefined;
  const accuracy = drop === undefined
    ? { check: 'accuracy' as const, ok: false, detail: 'no accuracy figure to judge by' }
    : {
        check: 'accuracy' as const,
        ok: drop <= b.maxDropPoints,
        detail: `${labelled ? 'top-1 drop' : 'top-1 disagreement with fp32'} ${drop} points ${drop <= b.maxDropPoints ? '≤' : '>'} budget ${b.maxDropPoints}`,
      };
  const s = report.latency.speedup;
  const latency = {
    check: 'latency' as const,
    ok: s > b.minSpeedup,
    detail: `int8 p50 ${report.latency.int8.p50Ms} ms vs fp32 ${report.latency.fp32.p50Ms} ms: ${s}× ${s > b.minSpeedup ? '>' : '≤'} required ${b.minSpeedup}×`,
  };
  return { promoted: accuracy.ok && latency.ok, checks: [accuracy, latency], budget: b };
}
