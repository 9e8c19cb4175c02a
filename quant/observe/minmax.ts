import type { Observer, Range } from './observer.js';

/** The running minimum and maximum over everything seen (PyTorch's MinMaxObserver). */
export class MinMaxObserver implements Observer {
  private lo = Infinity;
  private hi = -Infinity;
  seen = 0;
  /** Non-finite values seen and ignored. */
  skipped = 0;

  collect(values: Float32Array): void {
    let lo = this.lo;
    let hi = this.hi;
    let skipped = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      // Non-finite values would make every scale downstream infinite or NaN: skip and count them.
      if (!Number.isFinite(v)) {
        skipped++;
        continue;
      }
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    this.lo = lo;
    this.hi = hi;
    this.seen += values.length;
    this.skipped += skipped;
  }

  decide(): Range {
    if (this.seen === 0 || this.lo > this.hi) throw new Error('MinMaxObserver: no finite values were observed');
    return { min: this.lo, max: this.hi };
  }
}
