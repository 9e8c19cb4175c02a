/**
 * The fleet controller's MQTT side: connects (MQTT 5, QoS 1), subscribes to the devices' status
 * (retained, never shared: every instance needs every device's status) and to their replies and
 * reports (through `$share/<group>/…` when a share group is given, so with several instances
 * each message reaches exactly one of them), validates every message with the protocol's
 * parsers (bad ones are logged and ignored), stores it, then acknowledges it — a message is
 * PUBACKed only once stored, so a collector that dies loses nothing its persistent session
 * holds. Sends commands with a response topic, correlation data and an expiry.
 */
import { EventEmitter } from 'node:events';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import {
  COMMAND_ARGS,
  explainTlsError,
  fleetFilter,
  parseReply,
  parseReportPayload,
  parseStatus,
  parseTopic,
  reasonText,
  refusalCode,
  tlsDetail,
  topic,
  type Channel,
  type CommandType,
  type Reply,
  type Report,
  type Status,
} from '../agent/protocol/index.js';
import { mqttOptions, type BrokerOptions } from './mqtt.js';
import { FleetError } from './output.js';
import type { FleetStore } from './store/types.js';

export type LogEntry = { level: 'debug' | 'info' | 'warn' | 'error'; event: string } & Record<string, unknown>;
export type Logger = (entry: LogEntry) => void;

/** Structured log lines (one JSON object each) on stderr; debug only with EDGEQ_DEBUG. */
export const stderrLog: Logger = (entry) => {
  if (entry.level === 'debug' && !process.env.EDGEQ_DEBUG) return;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), ...entry }) + '\n');
};

export interface ControllerOptions extends BrokerOptions {
  store: FleetStore;
  /** Shared-subscription group for replies and reports (several instances split them). */
  share?: string;
  clientId?: string;
  /** Keep the session (clean start off, session expiry) so nothing is lost across restarts. */
  persistent?: boolean;
  /** Session expiry of a persistent session, seconds (default one day). */
  sessionExpiry?: number;
  log?: Logger;
  /** Extra mqtt.js options (tests). */
  mqtt?: IClientOptions;
}

/** What to receive of a channel: the whole fleet (shared when a group is set), or these devices only (never shared). */
export type Scope = 'fleet' | readonly string[];

export interface ControllerEvents {
  status: [deviceId: string, status: Status, applied: boolean];
  reply: [deviceId: string, reply: Reply, stored: boolean];
  report: [deviceId: string, report: Report, stored: boolean];
  invalid: [topic: string, error: string];
  error: [error: Error];
}

export interface OutgoingCommand {
  id: string;
  type: CommandType;
  args: Record<string, unknown>;
}

/** Above this many target devices, a wildcard subscription replaces per-device ones. */
const MAX_DEVICE_FILTERS = 64;
/** Publishes in flight at once when sending to many devices. */
const SEND_WINDOW = 256;
/** The most an MQTT 5 client can announce. */
const RECEIVE_MAXIMUM = 65_535;
const SHARE_GROUP = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * An error about the data rather than the store: PostgreSQL's SQLSTATE classes 22 (data
 * exception) and 23 (integrity violation), SQLite's constraint, type and size errors. Retrying
 * the same message cannot succeed.
 */
function isDataError(e: unknown): boolean {
  const code = (e as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  return /^2[23][0-9A-Z]{3}$/.test(code) || code.startsWith('SQLITE_CONSTRAINT') || code === 'SQLITE_MISMATCH' || code === 'SQLITE_TOOBIG';
}

/** Why a connection attempt failed, in one line: TLS refusals and CONNACK reason codes explained, in the CLI's flag names. */
function describeConnectError(e: Error, o: BrokerOptions): string {
  const tls = explainTlsError(e);
  if (tls) {
    const fix =
      tls.kind === 'certificate-required' || tls.kind === 'handshake-failure' ? (o.tlsCert ? '' : '; give the controller its certificate: --tls-cert and --tls-key')
      : tls.kind === 'unknown-ca' ? `; the certificate${o.tlsCert ? ` ${o.tlsCert}` : ''} must be issued by the CA in the broker's cafile`
      : tls.by === 'client' && tls.kind !== 'server-name' ? "; --tls-ca must be the CA that issued the broker's certificate"
      : '';
    return `${tls.reason}${fix} (${tlsDetail(e)})`;
  }
  const rc = refusalCode(e);
  if (rc !== undefined) return `the broker refused the connection: ${reasonText(rc)} (reason code ${rc})`;
  return e.message || (e as NodeJS.ErrnoException).code || 'error';
}

export class FleetController extends EventEmitter<ControllerEvents> {
  readonly clientId: string;
  readonly prefix: string;
  readonly share: string | undefined;
  private readonly client: MqttClient;
  private readonly store: FleetStore;
  private readonly log: Logger;
  private lastStatus = 0;
  private failed = false;
  private closing = false;

  private constructor(client: MqttClient, clientId: string, opts: ControllerOptions) {
    super();
    this.client = client;
    this.clientId = clientId;
    this.prefix = opts.prefix;
    this.share = opts.share;
    this.store = opts.store;
    this.log = opts.log ?? stderrLog;
  }

  /** A client id for a persistent session that stays the same across restarts on this host. */
  static defaultClientId(share?: string): string {
    return `edgeq-fleet-${hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 40)}${share ? `-${share}` : ''}`;
  }

  static async connect(opts: ControllerOptions): Promise<FleetController> {
    if (opts.share !== undefined && !SHARE_GROUP.test(opts.share)) throw new FleetError('E_ARGUMENT', `--share ${JSON.stringify(opts.share)}: a group name of letters, digits, . _ - (at most 64)`, true);
    const base = mqttOptions(opts);
    const clientId = opts.clientId ?? (opts.persistent ? FleetController.defaultClientId(opts.share) : `edgeq-fleet-cli-${randomUUID().slice(0, 12)}`);
    const persistent = opts.persistent ?? false;
    const client = mqtt.connect(opts.broker, {
      ...base,
      clientId,
      clean: !persistent,
      properties: {
        sessionExpiryInterval: persistent ? (opts.sessionExpiry ?? 86_400) : 0,
        // Unacknowledged messages the broker may have in flight to us. Without it mosquitto allows
        // 20 and queues 1000 more per client (max_queued_messages), then DROPS QoS 1 messages:
        // a fleet answering a command at once overflows that. Each message is acknowledged once
        // stored, so these are messages waiting in the socket, not lost on a crash.
        receiveMaximum: RECEIVE_MAXIMUM,
      },
      ...opts.mqtt,
    });
    const c = new FleetController(client, clientId, opts);
    // Installed before the first CONNACK: a persistent session's queued messages may follow it at once.
    client.handleMessage = (packet, done) => c.onMessage(packet, done);
    client.on('error', (e) => {
      // Once closing, a late PUBACK or a duplicate has nowhere to go: not worth a warning.
      if (!c.closing) c.log({ level: 'warn', event: 'mqtt_error', error: e.message });
    });
    client.on('offline', () => c.log({ level: 'warn', event: 'broker_offline', broker: opts.broker }));
    client.on('reconnect', () => c.log({ level: 'debug', event: 'broker_reconnect' }));
    await new Promise<void>((resolve, reject) => {
      const fail = (why: string) => {
        cleanup();
        client.end(true);
        reject(new FleetError('E_BROKER', `cannot connect to the broker at ${opts.broker}: ${why}`));
      };
      const onError = (e: Error) => fail(describeConnectError(e, opts));
      const onClose = () => fail('connection closed');
      const onConnect = () => {
        cleanup();
        resolve();
      };
      const cleanup = () => {
        client.off('error', onError);
        client.off('close', onClose);
        client.off('connect', onConnect);
      };
      client.on('error', onError);
      client.on('close', onClose);
      client.on('connect', onConnect);
    });
    c.log({ level: 'debug', event: 'connected', clientId, persistent });
    return c;
  }

  private filters(channel: Channel, scope: Scope): string[] {
    if (scope === 'fleet') return [fleetFilter(this.prefix, channel, channel === 'status' ? undefined : this.share)];
    if (scope.length > MAX_DEVICE_FILTERS) return [fleetFilter(this.prefix, channel)];
    return scope.map((id) => topic(this.prefix, id, channel));
  }

  /** Subscribes (QoS 1). Status is always the whole fleet and never shared. */
  async subscribe(what: { status?: boolean; reply?: Scope; report?: Scope }): Promise<void> {
    const filters: string[] = [];
    if (what.status) filters.push(...this.filters('status', 'fleet'));
    if (what.reply) filters.push(...this.filters('reply', what.reply));
    if (what.report) filters.push(...this.filters('report', what.report));
    if (filters.length === 0) return;
    // mqtt.js fails the call when the SUBACK refuses any filter; its reason codes (one per filter, in order) say which.
    const codes = await this.client.subscribeAsync(filters, { qos: 1 }).then(
      (granted) => granted.map((g) => g.qos as number),
      (e: unknown) => {
        const granted = (e as { packet?: { granted?: unknown[] } }).packet?.granted;
        if (!granted) throw e;
        return granted.map(Number);
      },
    );
    const refused = filters.map((f, i) => ({ f, rc: codes[i] })).filter((x) => x.rc >= 0x80);
    if (refused.length) {
      throw new FleetError(
        refused[0].rc === 135 ? 'E_NOT_AUTHORIZED' : 'E_SUBSCRIBE',
        `the broker refused the subscription to ${refused.map((x) => `${x.f} (${reasonText(x.rc)})`).join(', ')}${refused.some((x) => x.rc === 135) ? ': its ACL must let the controller read <prefix>/+/status, reply and report (docs/mqtt-security.md)' : ''}`,
      );
    }
  }

  /**
   * Waits until the retained statuses have arrived: no status for `quietMs` (MQTT has no
   * end-of-retained marker), at most `maxMs`.
   */
  async settle(quietMs = 250, maxMs = 5000): Promise<void> {
    const start = Date.now();
    this.lastStatus = Math.max(this.lastStatus, start);
    while (Date.now() - start < maxMs) {
      const wait = this.lastStatus + quietMs - Date.now();
      if (wait <= 0) return;
      await new Promise((r) => setTimeout(r, Math.min(wait, 50)));
    }
  }

  /** Validates the arguments of a command type against the protocol (throws a usage error). */
  static checkCommand(type: string, args: unknown): OutgoingCommand['args'] {
    if (!(type in COMMAND_ARGS)) throw new FleetError('E_COMMAND_UNKNOWN', `unknown command type ${JSON.stringify(type)} (known: ${Object.keys(COMMAND_ARGS).join(', ')})`, true);
    const r = COMMAND_ARGS[type as CommandType].safeParse(args ?? {});
    if (!r.success) {
      const issues = r.error.issues.slice(0, 3).map((i) => `${i.path.length ? i.path.join('.') : '(args)'}: ${i.message}`);
      throw new FleetError('E_COMMAND_INVALID', `${type}: ${issues.join('; ')}`, true);
    }
    return r.data as Record<string, unknown>;
  }

  /**
   * Publishes `cmd` (QoS 1) to each device's cmd topic with the device's reply topic as MQTT 5
   * response topic, the command id as correlation data and `expireSeconds` as message expiry
   * (a command not delivered by then is dropped by the broker rather than run late).
   */
  async send(deviceIds: readonly string[], cmd: OutgoingCommand, expireSeconds?: number): Promise<void> {
    const payload = JSON.stringify(cmd);
    const correlationData = Buffer.from(cmd.id);
    let next = 0;
    const worker = async () => {
      while (next < deviceIds.length) {
        const id = deviceIds[next++];
        const t = topic(this.prefix, id, 'cmd');
        await this.client.publishAsync(t, payload, {
          qos: 1,
          properties: {
            responseTopic: topic(this.prefix, id, 'reply'),
            correlationData,
            contentType: 'application/json',
            ...(expireSeconds ? { messageExpiryInterval: expireSeconds } : {}),
          },
        }).catch((e: unknown) => {
          const rc = refusalCode(e);
          if (rc === undefined) throw e;
          throw new FleetError(
            rc === 135 ? 'E_NOT_AUTHORIZED' : 'E_PUBLISH',
            `the broker refused the command to ${t}: ${reasonText(rc)} (reason code ${rc})${rc === 135 ? ': its ACL must let the controller write <prefix>/+/cmd (docs/mqtt-security.md)' : ''}`,
          );
        });
      }
    };
    await Promise.all(Array.from({ length: Math.min(SEND_WINDOW, deviceIds.length) }, worker));
  }

  private onMessage(packet: IPublishPacket, done: (e?: Error) => void): void {
    this.handle(packet).then(
      () => done(),
      (e: unknown) => {
        const err = e instanceof Error ? e : new Error(String(e));
        if (isDataError(e)) {
          // The store refuses this message's content (PostgreSQL takes no NUL in text, …):
          // a bad message like any other, dropped, so that it cannot block the ones after it.
          this.invalid(packet.topic, `the store refused it: ${err.message}`);
          done();
          return;
        }
        // Not acknowledged: the broker redelivers it to this session (or, shared, to another
        // member) once this controller is gone. The owner decides whether to stop.
        if (this.failed) return;
        this.failed = true;
        this.log({ level: 'error', event: 'store_failed', topic: packet.topic, error: err.message });
        if (this.listenerCount('error') > 0) this.emit('error', new FleetError('E_STORE', `storing a message failed: ${err.message}`));
      },
    );
  }

  private invalid(t: string, error: string): void {
    this.log({ level: 'warn', event: 'invalid_message', topic: t, error });
    this.emit('invalid', t, error);
  }

  private async handle(packet: IPublishPacket): Promise<void> {
    const t = packet.topic;
    const where = parseTopic(this.prefix, t);
    if (!where) {
      this.invalid(t, 'not a device topic under the prefix');
      return;
    }
    const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
    const { deviceId, channel } = where;
    switch (channel) {
      case 'status': {
        this.lastStatus = Date.now();
        if (payload.length === 0) return; // a retained status being cleared
        const p = parseStatus(payload);
        if (!p.ok) return this.invalid(t, `status: ${p.error}`);
        if (p.value.deviceId !== deviceId) return this.invalid(t, `status: deviceId ${p.value.deviceId} on the topic of ${deviceId}`);
        const applied = await this.store.upsertStatus(deviceId, p.value);
        if (!applied) this.log({ level: 'info', event: 'stale_will_ignored', deviceId, seq: p.value.seq });
        this.emit('status', deviceId, p.value, applied);
        return;
      }
      case 'reply': {
        const p = parseReply(payload);
        if (!p.ok) return this.invalid(t, `reply: ${p.error}`);
        if (p.value.deviceId !== deviceId) return this.invalid(t, `reply: deviceId ${p.value.deviceId} on the topic of ${deviceId}`);
        const stored = await this.store.recordReply(deviceId, p.value);
        this.emit('reply', deviceId, p.value, stored);
        return;
      }
      case 'report': {
        const p = parseReportPayload(payload);
        if (!p.ok) return this.invalid(t, `report: ${p.error}`);
        if (p.value.device.id !== undefined && p.value.device.id !== deviceId) return this.invalid(t, `report: device.id ${p.value.device.id} on the topic of ${deviceId}`);
        const stored = await this.store.recordReport(deviceId, p.value);
        this.emit('report', deviceId, p.value, stored);
        return;
      }
      case 'cmd':
        return; // not subscribed; another controller's command
    }
  }

  /** Disconnects (a persistent session stays on the broker and collects until its expiry). */
  async close(): Promise<void> {
    this.closing = true;
    await this.client.endAsync(this.failed).catch(() => undefined);
  }
}
