/**
 * Sends the store's outbox over the link, in order, one message at a time: a message leaves the
 * outbox only after the broker's PUBACK, so a lost connection, a broker restart or a crash of
 * the agent loses nothing (a message whose PUBACK was lost is sent again: at least once, and
 * every message carries an id — cmdId and state, report id — for receivers to de-duplicate).
 *
 * Volatile messages (progress replies) go out only when the outbox is empty, so they never
 * overtake a queued reply, and are dropped when the link is down.
 */
import type { IPublishPacket } from 'mqtt';
import type { OutboxProperties, OutboxRow, Store } from '../store/index.js';
import { LinkClosedError, type Log, type MqttLink } from './mqtt.js';

/** A message the broker refused (PUBACK with an error reason code) this often is dropped. */
const MAX_REFUSALS = 5;
const RETRY_MS = 2000;
/** Volatile messages kept while waiting for the outbox (the oldest go first). */
const MAX_VOLATILE = 64;

interface Volatile {
  topic: string;
  payload: string;
  properties?: IPublishPacket['properties'];
  /** A newer volatile message to the same topic in the same group replaces an older unsent one; dropVolatile(group) drops the group. */
  group?: string;
}

export function publishProperties(p: OutboxProperties | null | undefined): IPublishPacket['properties'] | undefined {
  if (!p?.correlationData) return undefined;
  return { correlationData: Buffer.from(p.correlationData, 'base64') };
}

export class OutboxSender {
  private draining = false;
  private volatile: Volatile[] = [];
  private retry: NodeJS.Timeout | undefined;
  private waiters: Array<() => void> = [];
  private stopped = false;

  constructor(
    private readonly store: Store,
    private readonly link: MqttLink,
    private readonly log: Log,
  ) {}

  /** Sends what is queued, if connected and not already sending. */
  kick(): void {
    if (this.draining || this.stopped) return;
    void this.drain();
  }

  /** A message worth sending only now (progress): after the outbox, dropped when offline. */
  sendVolatile(v: Volatile): void {
    if (!this.link.connected || this.stopped) return;
    if (v.group !== undefined) this.volatile = this.volatile.filter((x) => x.group !== v.group || x.topic !== v.topic);
    this.volatile.push(v);
    if (this.volatile.length > MAX_VOLATILE) this.volatile.shift();
    this.kick();
  }

  /** Forgets the unsent volatile messages of `group` (a job that ended: its progress is stale). */
  dropVolatile(group: string): void {
    this.volatile = this.volatile.filter((x) => x.group !== group);
  }

  /** The link dropped: unsent volatile messages are stale. */
  onDisconnect(): void {
    this.volatile = [];
  }

  stop(): void {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
  }

  /** Resolves true once the outbox is empty, or false after `timeoutMs`. */
  async whenEmpty(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.store.outboxSize() > 0 || this.draining) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      this.kick();
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return true;
  }

  private async drain(): Promise<void> {
    this.draining = true;
    try {
      while (this.link.connected && !this.stopped) {
        const [row] = this.store.peekOutbox(1);
        if (row) {
          if (!(await this.sendRow(row))) break;
          continue;
        }
        const v = this.volatile.shift();
        if (!v) break;
        try {
          await this.link.publish(v.topic, v.payload, { qos: 1, properties: v.properties });
        } catch {
          break;
        }
      }
    } catch (e) {
      this.log({ level: 'error', event: 'outbox-failed', message: (e as Error).message });
      this.scheduleRetry();
    } finally {
      this.draining = false;
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    }
  }

  /** True when the row went (or was dropped) and the next may follow. */
  private async sendRow(row: OutboxRow): Promise<boolean> {
    this.store.noteOutboxAttempt(row.id);
    try {
      await this.link.publish(row.topic, row.payload, { qos: row.qos === 0 ? 0 : 1, properties: publishProperties(row.properties) });
    } catch (e) {
      if (e instanceof LinkClosedError) return false; // sent again after the reconnect
      const reason = (e as { code?: unknown }).code;
      this.log({ level: 'warn', event: 'outbox-publish-refused', id: row.id, topic: row.topic, kind: row.kind, attempts: row.attempts + 1, message: (e as Error).message, reasonCode: reason });
      if (row.attempts + 1 >= MAX_REFUSALS) {
        this.log({ level: 'error', event: 'outbox-dropped', id: row.id, topic: row.topic, kind: row.kind, bytes: row.payload.length, why: `refused ${MAX_REFUSALS} times` });
        this.store.ackOutbox(row.id);
        return true;
      }
      this.scheduleRetry();
      return false;
    }
    this.store.ackOutbox(row.id);
    return true;
  }

  private scheduleRetry(): void {
    if (this.retry || this.stopped) return;
    this.retry = setTimeout(() => {
      this.retry = undefined;
      this.kick();
    }, RETRY_MS);
    this.retry.unref();
  }
}
