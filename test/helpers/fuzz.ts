/**
 * The fuzz properties of tools/fuzzing/targets.ts as ava tests, at each target's modest
 * `testRuns` (the long run is `npm run fuzz`). FUZZ_SEED=<n> replays a seed; FUZZ_SCALE=<x>
 * multiplies the runs.
 */
import type { ExecutionContext, TestFn } from 'ava';
import fc from 'fast-check';
import { propertyOf, runCase, type AnyTarget } from '../../tools/fuzzing/core.js';

/** Registers the target's property as one test; a failure shows the case, the seed and the path. */
export function fuzzTest(test: TestFn, target: AnyTarget): void {
  test(`fuzz ${target.name}: every input parses or fails with an EdgeqError of an expected code (${target.testRuns} runs)`, async (t) => {
    const ctx = await target.setup();
    try {
      const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined;
      const numRuns = Math.max(1, Math.round(target.testRuns * Number(process.env.FUZZ_SCALE ?? 1)));
      const d = await fc.check(propertyOf(target, ctx), { numRuns, ...(seed === undefined ? {} : { seed }) });
      if (d.failed) {
        const input = d.counterexample?.[0];
        t.fail(
          [
            `${target.name}: ${d.errorInstance instanceof Error ? d.errorInstance.message : String(d.errorInstance)}`,
            `seed ${d.seed}, path ${JSON.stringify(d.counterexamplePath)} (FUZZ_SEED=${d.seed} replays the run)`,
            `counterexample: ${input === undefined ? '?' : target.show(input).slice(0, 4000)}`,
          ].join('\n'),
        );
      } else t.pass();
    } finally {
      await target.teardown?.(ctx);
    }
  });
}

/** Runs the target's property on fixed inputs (found crashes, kept as regressions). */
export async function checkCases<I>(t: ExecutionContext, target: AnyTarget, inputs: I[]): Promise<void> {
  const ctx = await target.setup();
  try {
    for (const input of inputs) {
      try {
        await runCase(target, ctx, input);
      } catch (e) {
        t.fail(`${target.name}: ${(e as Error).message}\ncase: ${target.show(input).slice(0, 2000)}`);
      }
    }
    t.pass();
  } finally {
    await target.teardown?.(ctx);
  }
}
