/** The local inference endpoint, as a library. */
export { startServer, httpStatus, isLoopbackHost, DEFAULT_MAX_BODY_BYTES } from './server.js';
export type { ServerOptions, RunningServer } from './server.js';
export { staticModels, modelFromSpec } from './static-models.js';
export { MODEL_NAME, isModelName } from './names.js';
export type { ServedModel, ModelSource, SampleTensor, CaptureSink } from './types.js';
