import type { Observer, Range } from './observer.js';

/** The running minimum and maximum over everything seen (PyTorch's MinMaxObserver). */
export class MinMaxObserver implements Observer {
  private lo = Infinity;
  private hi = -Infinity;
  seen = 0;

  collect(values: Float32Array): void {
    let lo = this.lo;
    let hi = this.hi;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      // NaN fails both comparisons and so is ignored, as torch.aminmax ignores nothing but
      // a NaN range would poison every scale downstream.
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    this.lo = lo;
    this.hi = hi;
    this.seen += values.length;
  }

  decide(): Range {
    if (this.seen === 0 || this.lo > this.hi) throw new Error('MinMaxObserver: no finite values were observed');
    return { min: this.lo, max: this.hi };
  }
}
