/** The wire contract: the only part of the agent that fleet/ imports. */
export * from './messages.js';
export * from './report.js';
export * from './refusals.js';
