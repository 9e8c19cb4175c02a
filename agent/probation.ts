/**
 * Probation of a newly activated model version (issue: deploy, promotion gate).
 *
 * The warm-up inference at activation proves a model loads and runs once; it does not prove it
 * keeps working on real requests, nor that the process survives it. So an activation that
 * replaces a serving version is pending (store: pending_activations) until the endpoint has
 * served `confirmAfter` inferences of it in a row without a runtime error. While pending:
 *   - `maxFailures` runtime failures (a failed run, or the version failing to load) roll it back
 *     to its fallback at once;
 *   - every start of a serving process counts; the start after `maxStarts` rolls it back. A
 *     version that crashes the process never reaches its count, so systemd's restarts end in a
 *     rollback (as Mender and balena do for a boot that never commits).
 * confirmAfter 0 trusts the warm-up alone: a pending version is confirmed when the serving process
 * starts or serves it. A rollback goes back to the fallback (the last version that served without
 * probation), or failing that to the newest older version whose file is intact and warms up; the
 * version rolled back from is marked failed. Rollbacks are not themselves on probation.
 */
import { EdgeqError } from '../quant/errors.js';
import { fileIntact, warmUp } from './deploy.js';
import type { Log } from './endpoint.js';
import type { PendingActivation, Store } from './store/index.js';

export interface ProbationPolicy {
  /** Inferences in a row without error that confirm a pending version; 0: the warm-up is enough. */
  confirmAfter: number;
  /** Runtime failures while pending that trigger the rollback. */
  maxFailures: number;
  /** Serving-process starts while pending after which the next start rolls back. */
  maxStarts: number;
}

export const DEFAULT_PROBATION: ProbationPolicy = { confirmAfter: 100, maxFailures: 3, maxStarts: 3 };

export interface ProbationEvent {
  event: 'confirmed' | 'rolled-back' | 'rollback-impossible';
  model: string;
  version: number;
  /** For rolled-back: the version active now. */
  to?: number;
  reason?: string;
}

export class Probation {
  private readonly inFlight = new Map<string, Promise<void>>();
  /** model@version whose rollback found nothing to go back to: not retried on every request. */
  private readonly stuck = new Set<string>();

  constructor(
    private readonly store: Store,
    private readonly policy: ProbationPolicy,
    private readonly log: Log,
    private readonly onEvent: (e: ProbationEvent) => void = () => {},
  ) {}

  /** Call once when a serving process starts, before it serves: counts the start and settles what must be settled. */
  async onStart(): Promise<ProbationEvent[]> {
    const out: ProbationEvent[] = [];
    for (const p of this.store.recordPendingStarts()) {
      const e = await this.decide(p, true);
      if (e) out.push(e);
    }
    return out;
  }

  /**
   * One inference of `model` v`version` finished (ok) or failed at run time or load. Must not
   * throw or block the request: store errors are logged, a rollback runs in the background.
   */
  served(model: string, version: number, ok: boolean, error?: string): void {
    let p: PendingActivation | undefined;
    try {
      p = this.store.recordServed(model, version, ok, error);
    } catch (e) {
      this.log({ level: 'warn', event: 'probation-not-recorded', model, version, message: (e as Error).message });
      return;
    }
    if (!p || this.inFlight.has(model) || this.stuck.has(`${model}@${version}`)) return;
    const run = this.decide(p, false)
      .catch((e: unknown) => this.log({ level: 'error', event: 'probation-failed', model, version, message: (e as Error).message }))
      .then(() => {
        this.inFlight.delete(model);
      });
    this.inFlight.set(model, run);
  }

  /** Resolves when background decisions (rollbacks started by served()) are done. */
  async settled(): Promise<void> {
    await Promise.all([...this.inFlight.values()]);
  }

  private async decide(p: PendingActivation, atStart: boolean): Promise<ProbationEvent | undefined> {
    const { confirmAfter, maxFailures, maxStarts } = this.policy;
    if (p.failures >= maxFailures) return this.rollback(p, `${p.failures} runtime failure(s) while pending (limit ${maxFailures}); last: ${p.lastError ?? 'unknown'}`);
    if (atStart && p.starts > maxStarts) {
      return this.rollback(p, `the serving process started ${p.starts} times while this version was pending without reaching ${confirmAfter} good inferences (limit ${maxStarts} starts)`);
    }
    if (p.servedOk >= confirmAfter) {
      if (!this.store.confirmActivation(p.model, p.version)) return undefined;
      return this.emit({ event: 'confirmed', model: p.model, version: p.version, reason: confirmAfter === 0 ? 'warm-up passed' : `${p.servedOk} inferences in a row without error` });
    }
    return undefined;
  }

  private async rollback(p: PendingActivation, reason: string): Promise<ProbationEvent | undefined> {
    const older = this.store.listVersions(p.model).filter((v) => v.version < p.version && v.version !== p.fallbackVersion && v.state !== 'failed').reverse();
    const fallback = this.store.getVersion(p.model, p.fallbackVersion);
    const candidates = [...(fallback ? [fallback] : []), ...older];
    const problems: string[] = [];
    for (const v of candidates) {
      try {
        if (!(await fileIntact(v))) throw new EdgeqError('E_FILE_NOT_FOUND', `file missing or damaged`);
        await warmUp(v.path);
      } catch (e) {
        problems.push(`v${v.version}: ${(e as Error).message}`);
        continue;
      }
      if (!this.store.failActivation(p.model, p.version, v.version)) return undefined; // someone activated another version meanwhile
      return this.emit({ event: 'rolled-back', model: p.model, version: p.version, to: v.version, reason });
    }
    this.stuck.add(`${p.model}@${p.version}`);
    return this.emit({ event: 'rollback-impossible', model: p.model, version: p.version, reason: `${reason}; no version to go back to${problems.length ? ` (${problems.join('; ')})` : ''}` });
  }

  private emit(e: ProbationEvent): ProbationEvent {
    const level = e.event === 'confirmed' ? 'info' : e.event === 'rolled-back' ? 'warn' : 'error';
    this.log({ level, ...e, event: `probation-${e.event}` });
    try {
      this.onEvent(e);
    } catch (err) {
      this.log({ level: 'warn', event: 'probation-listener-failed', message: (err as Error).message });
    }
    return e;
  }
}
