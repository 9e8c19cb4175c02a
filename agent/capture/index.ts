/** Capture: getting real inputs from inference into the store without slowing inference down. */
export { CaptureWriter, type CaptureWriterOptions, type CaptureWriterStats } from './writer.js';
export { batchSize, fromTypedArray, splitBatch, splitSamples, toSampleTensor, type TensorLike } from './tensors.js';
