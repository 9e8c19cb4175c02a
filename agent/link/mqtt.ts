/**
 * The device's connection to the fleet broker over mqtt.js: MQTT 5, QoS 1, a persistent session
 * (fixed client id, clean start off, a session expiry), a Last Will per connection, and our own
 * reconnect loop (exponential backoff with full jitter) instead of mqtt.js's fixed interval.
 *
 * Each connection attempt is a fresh mqtt.js client: the will is part of CONNECT, and each
 * connection's will carries its own sequence number. mqtt.js's message stores are in memory
 * and die with the client; what must survive a lost connection or a crash is in the SQLite
 * outbox (outbox.ts), and the broker keeps the session (subscriptions, queued commands).
 */
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';

export type Log = (event: Record<string, unknown>) => void;

export interface LinkOptions {
  url: string;
  clientId: string;
  username?: string;
  password?: string;
  /** PEM contents (not paths). */
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized?: boolean;
  /** Seconds. */
  keepalive?: number;
  /** Seconds the broker keeps the session after a disconnect. */
  sessionExpiry?: number;
  connectTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** Largest packet the device accepts from the broker; larger ones the broker does not deliver. */
  maximumPacketSize?: number;
  /** The Last Will of the next connection (called before each attempt). */
  will: () => { topic: string; payload: string };
  onConnect: (info: { sessionPresent: boolean; attempt: number }) => void;
  onDisconnect?: () => void;
  onMessage: (topic: string, payload: Buffer, packet: IPublishPacket) => void;
  log: Log;
}

export interface PublishOptions {
  qos?: 0 | 1;
  retain?: boolean;
  properties?: IPublishPacket['properties'];
  /** Give up (reject) after this long without a PUBACK. */
  timeoutMs?: number;
}

export class LinkClosedError extends Error {
  constructor(message = 'not connected to the broker') {
    super(message);
    this.name = 'LinkClosedError';
  }
}

export class MqttLink {
  private client: MqttClient | undefined;
  private isConnected = false;
  private stopped = false;
  private failures = 0;
  private attempts = 0;
  private timer: NodeJS.Timeout | undefined;
  /** Rejecters of publishes waiting for a PUBACK on the current client. */
  private pending = new Set<(e: Error) => void>();
  private firstAttempt: Promise<boolean>;
  private settleFirst: (ok: boolean) => void = () => {};

  constructor(private readonly opts: LinkOptions) {
    this.firstAttempt = new Promise((resolve) => (this.settleFirst = resolve));
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** Starts connecting; resolves once the first attempt has succeeded (true) or failed (false). */
  start(): Promise<boolean> {
    this.attempt();
    return this.firstAttempt;
  }

  private attempt(): void {
    this.timer = undefined;
    if (this.stopped) return;
    const attempt = ++this.attempts;
    const will = this.opts.will();
    const o = this.opts;
    const options: IClientOptions = {
      protocolVersion: 5,
      clientId: o.clientId,
      clean: false,
      reconnectPeriod: 0,
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      keepalive: o.keepalive ?? 30,
      resubscribe: false,
      queueQoSZero: false,
      properties: { sessionExpiryInterval: o.sessionExpiry ?? 86_400, ...(o.maximumPacketSize ? { maximumPacketSize: o.maximumPacketSize } : {}) },
      will: { topic: will.topic, payload: Buffer.from(will.payload), qos: 1, retain: true },
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(o.ca ? { ca: o.ca } : {}),
      ...(o.cert ? { cert: o.cert } : {}),
      ...(o.key ? { key: o.key } : {}),
      ...(o.rejectUnauthorized === false ? { rejectUnauthorized: false } : {}),
    };
    let client: MqttClient;
    try {
      client = mqtt.connect(o.url, options);
    } catch (e) {
      o.log({ level: 'error', event: 'mqtt-connect-failed', attempt, message: (e as Error).message });
      this.settleFirst(false);
      this.scheduleReconnect();
      return;
    }
    this.client = client;
    let closed = false;
    client.on('connect', (connack) => {
      if (this.client !== client) return;
      this.isConnected = true;
      this.failures = 0;
      o.log({ level: 'info', event: 'mqtt-connected', url: o.url, clientId: o.clientId, sessionPresent: connack.sessionPresent, attempt });
      this.settleFirst(true);
      try {
        o.onConnect({ sessionPresent: connack.sessionPresent, attempt });
      } catch (e) {
        o.log({ level: 'error', event: 'on-connect-failed', message: (e as Error).message });
      }
    });
    client.on('message', (t, payload, packet) => {
      if (this.client !== client) return;
      o.onMessage(t, payload, packet);
    });
    client.on('disconnect', (packet) => {
      // The broker ended the connection: 142 "session taken over" means another client uses this device id.
      o.log({ level: 'warn', event: 'mqtt-disconnect-by-broker', reasonCode: packet.reasonCode ?? 0, ...(packet.properties?.reasonString ? { reason: packet.properties.reasonString } : {}) });
    });
    client.on('error', (e) => {
      o.log({ level: 'warn', event: 'mqtt-error', message: e.message, ...('code' in e ? { code: (e as { code?: unknown }).code } : {}) });
    });
    client.on('close', () => {
      if (closed || this.client !== client) return;
      closed = true;
      const wasConnected = this.isConnected;
      this.isConnected = false;
      this.client = undefined;
      for (const reject of this.pending) reject(new LinkClosedError('the connection to the broker closed'));
      this.pending.clear();
      client.removeAllListeners();
      client.on('error', () => {});
      client.end(true);
      if (wasConnected) {
        o.log({ level: 'warn', event: 'mqtt-disconnected' });
        try {
          o.onDisconnect?.();
        } catch (e) {
          o.log({ level: 'error', event: 'on-disconnect-failed', message: (e as Error).message });
        }
      } else this.settleFirst(false);
      this.scheduleReconnect();
    });
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.timer) return;
    const delay = backoffDelay(this.failures++, this.opts.backoff ?? DEFAULT_BACKOFF);
    this.opts.log({ level: 'info', event: 'mqtt-reconnect-scheduled', delayMs: delay, failures: this.failures });
    this.timer = setTimeout(() => this.attempt(), delay);
  }

  /** Publishes and resolves on PUBACK (QoS 1) or once written (QoS 0); rejects when not connected or the connection drops first. */
  publish(topicName: string, payload: string | Buffer, po: PublishOptions = {}): Promise<void> {
    const client = this.client;
    if (!client || !this.isConnected) return Promise.reject(new LinkClosedError());
    return new Promise<void>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const done = (e?: Error) => {
        if (!this.pending.delete(fail)) return;
        if (timer) clearTimeout(timer);
        if (e) reject(e);
        else resolve();
      };
      const fail = (e: Error) => done(e);
      this.pending.add(fail);
      if (po.timeoutMs !== undefined) timer = setTimeout(() => done(new Error(`no PUBACK within ${po.timeoutMs} ms`)), po.timeoutMs);
      client.publish(topicName, payload, { qos: po.qos ?? 1, retain: po.retain ?? false, ...(po.properties ? { properties: po.properties } : {}) }, (err) => done(err ?? undefined));
    });
  }

  subscribe(filters: string[]): Promise<void> {
    const client = this.client;
    if (!client || !this.isConnected) return Promise.reject(new LinkClosedError());
    return new Promise((resolve, reject) => {
      client.subscribe(filters, { qos: 1 }, (err, granted) => {
        if (err) return reject(err);
        const refused = (granted ?? []).filter((g) => g.qos > 2);
        if (refused.length) return reject(new Error(`the broker refused the subscription to ${refused.map((g) => g.topic).join(', ')} (reason ${refused.map((g) => g.qos).join(', ')})`));
        resolve();
      });
    });
  }

  /** Disconnects cleanly (the broker does not publish the will) and stops reconnecting. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.settleFirst(false);
    const client = this.client;
    this.client = undefined;
    this.isConnected = false;
    for (const reject of this.pending) reject(new LinkClosedError('the link is stopping'));
    this.pending.clear();
    if (!client) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        client.end(true);
        resolve();
      }, 2000);
      client.end(false, { reasonCode: 0 }, () => {
        clearTimeout(t);
        resolve();
      });
    });
    client.removeAllListeners();
    client.on('error', () => {});
  }
}
