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
import { X509Certificate } from 'node:crypto';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { explainTlsError, reasonText, refusalCode, tlsDetail, type TlsFailure } from '../protocol/refusals.js';
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

/**
 * The broker answered a PUBLISH (PUBACK) or SUBSCRIBE (SUBACK) with an error reason code — 135
 * "not authorized" when its ACL does not let this client use the topic. `code` is the reason code.
 */
export class BrokerRefusal extends Error {
  readonly reason: string;
  constructor(
    readonly operation: 'publish' | 'subscribe',
    readonly topic: string,
    readonly code: number,
  ) {
    const reason = reasonText(code);
    super(`the broker refused to let this client ${operation === 'publish' ? 'publish to' : 'subscribe to'} ${topic}: ${reason} (reason code ${code})`);
    this.name = 'BrokerRefusal';
    this.reason = reason;
  }
}

/** Subject, issuer and validity of a PEM certificate, for logs (undefined if it does not parse). */
export function describeCertificate(pem: Buffer | undefined): { subject: string; issuer: string; validFrom: string; validTo: string } | undefined {
  if (!pem) return undefined;
  try {
    const c = new X509Certificate(pem);
    const flat = (dn: string) => dn.split('\n').filter(Boolean).join(', ');
    return { subject: flat(c.subject), issuer: flat(c.issuer), validFrom: c.validFrom, validTo: c.validTo };
  } catch {
    return undefined;
  }
}

/** The CN of a PEM certificate's subject, or undefined. */
export function certificateCommonName(pem: Buffer | undefined): string | undefined {
  if (!pem) return undefined;
  try {
    const m = /^CN=(.*)$/m.exec(new X509Certificate(pem).subject);
    return m?.[1];
  } catch {
    return undefined;
  }
}

const CERT_SETTINGS = 'broker.cert and broker.key in the config, EDGEQ_TLS_CERT and EDGEQ_TLS_KEY, or --tls-cert and --tls-key';
const CA_SETTING = 'broker.ca in the config, EDGEQ_TLS_CA or --tls-ca';

/** What to check for a TLS failure, in the daemon's own setting names. */
function tlsHint(f: TlsFailure, o: LinkOptions): string {
  const cert = describeCertificate(o.cert);
  const mine = cert ? `this device's certificate is ${cert.subject}, issued by ${cert.issuer}, valid ${cert.validFrom} to ${cert.validTo}` : '';
  switch (f.kind) {
    case 'certificate-required':
    case 'handshake-failure':
      return o.cert ? `the broker did not accept the certificate presented (${mine})` : `give the device its certificate and key: ${CERT_SETTINGS}`;
    case 'unknown-ca':
      return `the certificate must be issued by the fleet's CA, the one in the broker's cafile; ${mine || 'no certificate is set'}`;
    case 'bad-certificate':
    case 'certificate-expired':
    case 'certificate-revoked':
      return `issue the device a new certificate from the fleet's CA${mine ? `; ${mine}` : ''}`;
    case 'server-untrusted':
    case 'server-expired':
      return `${CA_SETTING} must be the CA that issued the broker's certificate${o.ca ? '' : ' (none is set: the system CAs are used)'}`;
    case 'server-name':
      return "use a host name or address the broker's certificate names (its subjectAltName) in the broker URL";
    case 'key-mismatch':
      return `broker.key must be the private key of broker.cert (${CERT_SETTINGS})`;
    default:
      return '';
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
      const tls = explainTlsError(e as Error);
      o.log({ level: 'error', event: 'mqtt-connect-failed', attempt, message: tls ? tls.reason : (e as Error).message, ...(tls ? { hint: tlsHint(tls, o), kind: tls.kind } : {}) });
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
    client.on('error', (e) => this.logError(e, attempt, client));
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

  /**
   * A connection error, explained where we know it: a TLS handshake the broker or we refused
   * (mqtt-tls-failed), or a CONNACK with an error reason code (mqtt-connect-refused), each one line
   * naming the cause and what to check. Anything else is logged as it came (mqtt-error).
   */
  private logError(e: Error & { code?: unknown }, attempt: number, client: MqttClient): void {
    const o = this.opts;
    const tls = explainTlsError(e);
    if (tls) {
      const cert = describeCertificate(o.cert);
      o.log({ level: 'error', event: 'mqtt-tls-failed', url: o.url, attempt, by: tls.by, kind: tls.kind, reason: tls.reason, hint: tlsHint(tls, o), code: e.code, detail: tlsDetail(e), ...(cert ? { certificate: cert } : {}) });
      return;
    }
    const rc = refusalCode(e);
    if (rc !== undefined && !this.isConnected && this.client === client) {
      const hint = rc === 134 ? 'check broker.username and broker.password (EDGEQ_USERNAME, EDGEQ_PASSWORD)'
        : rc === 135 ? `the broker's authentication or ACL does not let this client connect (client id ${o.clientId}${o.username !== undefined ? `, user ${o.username}` : ''})`
        : rc === 133 ? `the broker does not accept the client id ${o.clientId}`
        : rc === 138 ? 'the broker banned this client'
        : '';
      o.log({ level: 'error', event: 'mqtt-connect-refused', url: o.url, attempt, reasonCode: rc, reason: `the broker refused the connection: ${reasonText(rc)}`, ...(hint ? { hint } : {}) });
      return;
    }
    o.log({ level: 'warn', event: 'mqtt-error', message: e.message, ...(e.code !== undefined ? { code: e.code } : {}) });
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
      client.publish(topicName, payload, { qos: po.qos ?? 1, retain: po.retain ?? false, ...(po.properties ? { properties: po.properties } : {}) }, (err) => {
        const rc = err ? refusalCode(err) : undefined;
        done(rc !== undefined ? new BrokerRefusal('publish', topicName, rc) : (err ?? undefined));
      });
    });
  }

  subscribe(filters: string[]): Promise<void> {
    const client = this.client;
    if (!client || !this.isConnected) return Promise.reject(new LinkClosedError());
    return new Promise((resolve, reject) => {
      // mqtt.js fails the whole call when the SUBACK refuses any filter; the SUBACK's reason
      // codes (one per filter, in order) say which.
      client.subscribe(filters, { qos: 1 }, (err, granted, suback) => {
        const codes = (suback?.granted ?? (granted ?? []).map((g) => g.qos)).map(Number);
        const i = codes.findIndex((c) => c >= 0x80);
        if (i >= 0) return reject(new BrokerRefusal('subscribe', filters[i] ?? filters.join(', '), codes[i]));
        if (err) return reject(err);
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
