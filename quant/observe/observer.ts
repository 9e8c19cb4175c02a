/**
 * Observers watch one tensor's values during calibration and decide the range to quantize it
 * with. As in PyTorch, seeing data (collect) is split from deciding (decide), and an observer's
 * memory is fixed when it is made: it never keeps the samples themselves.
 */
export interface Range {
  min: number;
  max: number;
}

export interface Observer {
  /** Sees a batch of the tensor's values (any shape, flattened). */
  collect(values: Float32Array): void;
  /** The range to quantize with; throws if nothing was collected. */
  decide(): Range;
  /** Number of values seen so far. */
  readonly seen: number;
}

export type ObserverFactory = () => Observer;
