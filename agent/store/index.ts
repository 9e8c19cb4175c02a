/**
 * The on-device store (one SQLite file) and the capture policy. The only place in edgeq with
 * SQL: everything else goes through the typed Store.
 */
export * from './types.js';
export { Store, BUSY_TIMEOUT_MS } from './store.js';
export { MIGRATIONS } from './schema.js';
export { checkSample, checkSource, elementCount, sampleHash, splitOf } from './sample.js';
