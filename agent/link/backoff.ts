/** Reconnect delays: exponential backoff with full jitter. */

export interface BackoffOptions {
  /** Ceiling of the first delay, ms. */
  baseMs: number;
  /** Largest ceiling, ms. */
  capMs: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = Object.freeze({ baseMs: 1000, capMs: 60_000 });

/**
 * The delay before reconnect attempt `attempt` (0 for the first after a loss): uniform in
 * [0, min(cap, base · 2^attempt)) — "full jitter", so a fleet that lost its broker at the same
 * moment does not come back at the same moment.
 */
export function backoffDelay(attempt: number, o: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const ceiling = Math.min(o.capMs, o.baseMs * 2 ** Math.min(Math.max(0, attempt), 30));
  return Math.floor(random() * ceiling);
}
