/**
 * What the inference endpoint needs from the rest of the agent: a source of models (the model
 * registry, or fixed files) and an optional sink for captured request samples.
 */

/** One model version the endpoint can serve. */
export interface ServedModel {
  name: string;
  version: number;
  kind: 'fp32' | 'int8';
  /** The ONNX file. */
  path: string;
}

export interface ModelSource {
  /** The version to serve now for `name`, or undefined if there is no such model. May change between calls (a new version activated). */
  resolve(name: string): ServedModel | undefined;
  list(): ServedModel[];
}

/** One validated input tensor of a request. */
export interface SampleTensor {
  name: string;
  /** ONNX Runtime's type name: float32, uint8, int64, … */
  dtype: string;
  shape: number[];
  /** Raw little-endian bytes, the whole request batch. */
  data: Uint8Array;
}

export interface CaptureSink {
  /** Called after the reply is sent, with the request's validated inputs. Must not throw; must not block. */
  offer(model: string, version: number, tensors: SampleTensor[], source: string): void;
  /** Per model, for /metrics. */
  stats?(): Record<string, { samples: number; bytes: number }>;
}
