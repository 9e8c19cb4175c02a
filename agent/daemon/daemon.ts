/**
 * The device daemon (`edgeq run`): the store, the local endpoint and the fleet link in one
 * process, answering the fleet's commands (agent/protocol/messages.ts) and running its jobs one
 * at a time from a queue kept in SQLite.
 *
 * Commands. Every command is parsed against the contract; a bad one gets `rejected` with a code.
 * A command id is answered once: its answer is recorded with the work it caused, in the same
 * transaction, and a repeat of the id gets the recorded answer (or the job's current state)
 * without the work being done again. status, detect, capture, cancel and config are answered
 * at once; optimize, quantize, eval, bench and import are jobs: `accepted` (persisted in the
 * queue), then `running` with progress, then `succeeded`, `failed` or `cancelled`.
 *
 * Delivery. Accepted and terminal replies and reports go through the SQLite outbox and leave
 * it only after the broker's PUBACK (link/outbox.ts); progress goes out directly and is
 * dropped while offline. The retained status topic carries a birth on every connection and
 * the connection's will, both with a sequence number that grows with every connection.
 *
 * Crashes. A job that was running when the daemon died gets a `failed` reply with
 * E_INTERRUPTED at the next start (its run is marked interrupted); queued jobs run then.
 * A graceful stop (SIGTERM) stops the running job at its next progress point and puts it back
 * in the queue, to run again from the start at the next start.
 */
import { mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { IPublishPacket } from 'mqtt';
import { EdgeqError, isEdgeqError } from '../../quant/errors.js';
import { detectReport } from '../commands/detect.js';
import { chooseProfile, localCpuAsync, type CpuFacts, type ProfileChoice } from '../detect.js';
import { deviceFacts } from '../device.js';
import { jsonLog, startEndpoint, type Endpoint, type Log } from '../endpoint.js';
import { backoffDelay, BrokerRefusal, certificateCommonName, MqttLink, OutboxSender, publishProperties } from '../link/index.js';
import {
  COMMAND_ARGS, IMMEDIATE, PROTOCOL_VERSION, TERMINAL, parseCommand, parseStatus, topic,
  type Channel, type Command, type Reply, type ReplyState, type Status,
} from '../protocol/messages.js';
import { storeFile } from '../state.js';
import { Store, type CapturePolicy, type JobRow, type OutboxMessage, type ReplyTo } from '../store/index.js';
import { mallocTuned } from './malloc-env.js';
import { AGENT_VERSION } from '../version.js';
import { applyOverrides, describeConfig, saveOverrides, type DaemonConfig, type Overrides } from './config.js';
import { probationPolicy } from '../config.js';
import { checkSource } from './import-source.js';
import { JOB_TYPES, runJob, type JobOutcome } from './jobs.js';
import { loopTurn, SystemdNotifier } from './notify.js';
import { nextSeq, readSeq, takeLock, type Lock } from './state-files.js';

/** Progress replies of one job: at most this often (plus one at every stage change). */
const PROGRESS_INTERVAL_MS = 250;
/** How long a command id is remembered (a repeat within it gets the recorded answer). */
const COMMAND_MEMORY_MS = 30 * 86_400_000;
/** The client accepts packets up to this size from the broker; a command above the configured limit but below this gets a `rejected` reply. */
const MAX_PACKET_BYTES = 16 * 1024 * 1024;
/** The systemd watchdog calls the job runner wedged when the running job reports no progress for this long (EDGEQ_JOB_STALL_MS overrides). */
const JOB_STALL_MS = Number(process.env.EDGEQ_JOB_STALL_MS) > 0 ? Number(process.env.EDGEQ_JOB_STALL_MS) : 15 * 60_000;

interface Running {
  job: JobRow;
  abort: AbortController;
  progress: number;
  stage: string;
  lastSent: number;
  lastStage: string;
  runId?: string;
  /** Settles once the job's answer is recorded (never rejects). */
  done: Promise<void>;
}

/** The id of a command too large to parse, when it is the first key: `{"id": "…", …}`. */
function sniffId(payload: Buffer): string | undefined {
  const m = /^\s*\{\s*"id"\s*:\s*"([\x21\x23-\x5b\x5d-\x7e]{1,128})"/.exec(payload.subarray(0, 512).toString('latin1'));
  return m?.[1];
}

function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), Math.max(0, ms));
    const settled = () => {
      clearTimeout(t);
      resolve(true);
    };
    p.then(settled, settled);
  });
}

/** The agent process's memory and age, for the status command's reply. */
function processFacts(): NonNullable<Status['process']> {
  return { uptimeS: Math.round(process.uptime()), rssBytes: process.memoryUsage.rss(), heapUsedBytes: process.memoryUsage().heapUsed, mallocTuned: mallocTuned() };
}

export class Daemon {
  private store!: Store;
  private lock: Lock | undefined;
  private cpu!: CpuFacts;
  private profile!: ProfileChoice;
  private endpoint: Endpoint | undefined;
  private link: MqttLink | undefined;
  private outbox: OutboxSender | undefined;
  private seq = 0;
  private current: Running | undefined;
  private stopping = false;
  private stopPromise: Promise<void> | undefined;
  private starting: Promise<{ connected: boolean }> | undefined;
  private started = false;
  private readonly log: Log;
  private readonly notify: SystemdNotifier;
  /** Since when queued jobs have waited with none running (the watchdog's runner check). */
  private idleWithQueueSince: number | undefined;
  /** Session set-ups (subscribe, birth) the broker refused in a row on this connection, and the timer of the next try. */
  private setupRefusals = 0;
  private setupRetry: NodeJS.Timeout | undefined;

  constructor(private readonly cfg: DaemonConfig, log: Log = jsonLog) {
    this.log = (e) => log({ component: 'daemon', ...e });
    this.notify = SystemdNotifier.fromEnv((e) => this.log({ ...e, component: 'systemd' }));
  }

  private t(channel: Channel): string {
    return topic(this.cfg.prefix, this.cfg.deviceId, channel);
  }

  // ---- lifecycle ------------------------------------------------------------------------------

  /**
   * Opens the store, detects the CPU, recovers jobs a crash left behind, starts the endpoint and
   * makes the first connection attempt (resolves after it, connected or not: the link keeps
   * trying in the background).
   */
  start(): Promise<{ connected: boolean }> {
    this.starting ??= this.doStart();
    return this.starting;
  }

  private async doStart(): Promise<{ connected: boolean }> {
    const c = this.cfg;
    this.log({ level: 'info', event: 'starting', version: AGENT_VERSION, pid: process.pid, mallocTuned: mallocTuned(), config: describeConfig(c) });
    this.lock = takeLock(c.stateDir);
    try {
      // Jobs' temporary files (exported samples, downloads, int8 models before registration)
      // live in the state directory, private like the store, and what a crash left is wiped.
      const tmp = join(c.stateDir, 'tmp');
      rmSync(tmp, { recursive: true, force: true });
      mkdirSync(tmp, { recursive: true, mode: 0o700 });
      process.env.TMPDIR = tmp;
      this.store = Store.open(storeFile(c.stateDir));
      this.store.setLimits(c.limits);
      this.cpu = await localCpuAsync();
      this.profile = chooseProfile(this.cpu);
      this.seq = readSeq(c.stateDir);
      const forgotten = this.store.pruneCommands(Date.now() - COMMAND_MEMORY_MS);
      if (forgotten) this.log({ level: 'info', event: 'commands-forgotten', count: forgotten, olderThanDays: COMMAND_MEMORY_MS / 86_400_000 });
      this.warnReadableSecrets();
      this.applyCapturePolicies();
      this.recoverJobs();
      if (c.endpoint) {
        this.endpoint = await startEndpoint(this.store, {
          ...c.endpoint, capture: c.capture.enabled, captureQueue: { maxQueue: c.capture.maxQueue, maxQueueBytes: c.capture.maxQueueBytes },
          threads: c.threads, log: (e) => this.log({ ...e, component: 'endpoint' }),
          probation: probationPolicy(c.deploy),
          // An automatic rollback changes what the device runs: the fleet sees it in the birth.
          onProbation: (e) => {
            if (e.event === 'rolled-back') this.refreshStatus();
          },
        });
        this.log({ level: 'info', event: 'endpoint-started', socket: this.endpoint.server.socket ?? null, port: this.endpoint.server.port ?? null });
      }
      if (this.stopping) {
        this.started = true;
        return { connected: false };
      }
      const b = c.broker;
      this.link = new MqttLink({
        url: b.url,
        clientId: `edgeq-${c.deviceId}`,
        username: b.username,
        password: b.password,
        ca: b.ca,
        cert: b.cert,
        key: b.key,
        rejectUnauthorized: b.rejectUnauthorized,
        keepalive: b.keepalive,
        sessionExpiry: b.sessionExpiry,
        connectTimeoutMs: b.connectTimeoutMs,
        backoff: b.reconnect,
        maximumPacketSize: Math.max(MAX_PACKET_BYTES, c.maxCommandBytes * 2),
        will: () => {
          this.seq = nextSeq(c.stateDir);
          return { topic: this.t('status'), payload: JSON.stringify(this.offlineStatus('connection lost')) };
        },
        onConnect: () => this.onConnect(),
        onDisconnect: () => {
          this.cancelSetupRetry();
          this.outbox?.onDisconnect();
        },
        onMessage: (t, payload, packet) => this.onMessage(t, payload, packet),
        log: (e) => this.log({ ...e, component: 'link' }),
      });
      this.outbox = new OutboxSender(this.store, this.link, (e) => this.log({ ...e, component: 'outbox' }));
      const connected = await this.link.start();
      this.log({ level: 'info', event: 'ready', connected, deviceId: c.deviceId, queued: this.store.countJobs('queued'), outbox: this.store.outboxSize() });
      this.started = true;
      this.pump();
      void this.notify.ready(connected ? 'ready; connected to the broker' : 'ready; broker not reached yet, retrying');
      this.notify.startWatchdog(() => this.health());
      return { connected };
    } catch (e) {
      await this.link?.stop().catch(() => {});
      await this.endpoint?.close().catch(() => {});
      if (this.store) this.store.close();
      this.lock.release();
      throw e;
    }
  }

  /**
   * Graceful stop, bounded by shutdownTimeoutMs: no job starts any more; the running one stops
   * at its next progress point and goes back to the queue; the outbox is flushed; the retained
   * status says offline; everything closes.
   */
  stop(reason: string): Promise<void> {
    this.stopPromise ??= this.doStop(reason);
    return this.stopPromise;
  }

  private async doStop(reason: string): Promise<void> {
    this.stopping = true;
    void this.notify.stopping(`stopping: ${reason}`);
    if (!this.started) {
      // Stopped while starting (say, during the first connection attempt): let the start end.
      await this.link?.stop();
      const ok = await this.starting?.then(() => true, () => false);
      if (!ok) return;
    }
    const bound = this.cfg.shutdownTimeoutMs;
    const t0 = Date.now();
    const left = (share: number) => t0 + share * bound - Date.now();
    this.log({ level: 'info', event: 'stopping', reason, job: this.current?.job.cmdId ?? null });
    // The running job stops at its next progress point and goes back to the queue (it runs
    // again at the next start); 80% of the bound for that, the rest flushes the outbox.
    const r = this.current;
    if (r) {
      this.log({ level: 'info', event: 'job-stopping', cmdId: r.job.cmdId, why: 'shutdown; the job runs again at the next start' });
      r.abort.abort('shutdown');
      if (!(await within(r.done, left(0.8)))) this.log({ level: 'warn', event: 'job-still-running', cmdId: r.job.cmdId, why: 'it did not reach a progress point in time; the next start reports it interrupted' });
    }
    if (this.link?.connected && this.outbox) {
      const flushed = await this.outbox.whenEmpty(Math.max(500, left(0.9)));
      if (!flushed) this.log({ level: 'warn', event: 'outbox-not-flushed', left: this.store.outboxSize(), why: 'sent at the next start' });
    }
    if (this.link?.connected) {
      try {
        await this.link.publish(this.t('status'), JSON.stringify(this.offlineStatus('stopped')), { qos: 1, retain: true, timeoutMs: Math.max(500, Math.min(3000, left(1))) });
      } catch (e) {
        this.log({ level: 'warn', event: 'offline-status-failed', message: (e as Error).message });
      }
    }
    this.cancelSetupRetry();
    this.outbox?.stop();
    await this.link?.stop();
    if (this.endpoint) await within(this.endpoint.close(), 3000);
    this.store.close();
    this.lock?.release();
    await within(this.notify.close(), 3000);
    this.log({ level: 'info', event: 'stopped', reason });
  }

  /**
   * The systemd watchdog's health check: undefined when healthy, else why not. Proves the event
   * loop turns, SQLite answers a query, and the job runner is not wedged (the running job
   * reports progress; queued jobs do not wait with none running).
   */
  private async health(): Promise<string | undefined> {
    const t0 = Date.now();
    await loopTurn();
    const lag = Date.now() - t0;
    if (this.notify.watchdogMs !== undefined && lag > this.notify.watchdogMs) return `event loop turn took ${lag} ms`;
    let queued: number;
    try {
      this.store.schemaVersion();
      queued = this.store.countJobs('queued');
    } catch (e) {
      return `SQLite does not answer: ${(e as Error).message}`;
    }
    const now = Date.now();
    const r = this.current;
    if (r && now - r.lastSent > JOB_STALL_MS) return `job ${r.job.cmdId} (${r.job.type}) has reported no progress for ${Math.round((now - r.lastSent) / 1000)} s (stage ${r.stage})`;
    if (!r && queued > 0 && !this.stopping) {
      this.idleWithQueueSince ??= now;
      if (now - this.idleWithQueueSince > 60_000) return `${queued} queued job(s) but none has started for ${Math.round((now - this.idleWithQueueSince) / 1000)} s`;
    } else {
      this.idleWithQueueSince = undefined;
    }
    return undefined;
  }

  // ---- start-up -------------------------------------------------------------------------------

  private warnReadableSecrets(): void {
    const file = this.cfg.configFile;
    if (!file || this.cfg.broker.password === undefined) return;
    try {
      const mode = statSync(file).mode;
      if ((mode & 0o077) !== 0 && JSON.stringify(JSON.parse(readFileSync(file, 'utf8'))).includes('"password"')) {
        this.log({ level: 'warn', event: 'config-readable', file, mode: (mode & 0o777).toString(8), why: 'it holds the broker password and others can read it; chmod 600 it, or use EDGEQ_PASSWORD' });
      }
    } catch {
      // the file was read at start; a race here is not worth failing for
    }
  }

  private applyCapturePolicies(): void {
    for (const [name, p] of Object.entries(this.cfg.capture.policies)) {
      if (!this.store.hasModel(name)) {
        this.log({ level: 'warn', event: 'capture-policy-skipped', model: name, why: 'no such model registered' });
        continue;
      }
      const patch: Partial<CapturePolicy> = {};
      if (p.enabled !== undefined) patch.enabled = p.enabled;
      if (p.rate !== undefined) patch.rate = p.rate;
      if (p.maxSamples !== undefined) patch.maxSamples = p.maxSamples;
      if (p.maxBytes !== undefined) patch.maxBytes = p.maxBytes;
      if (p.retentionDays !== undefined) patch.retentionMs = Math.round(p.retentionDays * 86_400_000);
      this.store.setPolicy(name, patch);
    }
  }

  /** Jobs that were running when the daemon died: answered `failed` with E_INTERRUPTED. */
  private recoverJobs(): void {
    for (const j of this.store.listJobs()) {
      if (j.state !== 'running') continue;
      const run = j.runId ? this.store.getRun(j.runId) : undefined;
      const reply = this.reply(j.cmdId, j.type, 'failed', {
        error: {
          code: 'E_INTERRUPTED',
          message: `interrupted: the agent stopped (crash, kill or power loss) while this ${j.type} job ran${run ? `; run ${run.id} is marked ${run.state}` : ''}. Send the command again with a new id to retry.`,
        },
        ...(j.runId ? { result: { runId: j.runId } } : {}),
      });
      this.store.answerCommand(j.cmdId, reply, this.replyMessages(reply, j.replyTo ?? undefined));
      this.log({ level: 'warn', event: 'job-interrupted', cmdId: j.cmdId, type: j.type, runId: j.runId });
    }
  }

  // ---- the link -------------------------------------------------------------------------------

  private onConnect(): void {
    this.cancelSetupRetry();
    this.setupRefusals = 0;
    void this.setUpSession();
  }

  /**
   * Commands first, so a controller that sees the birth can already send; then the birth; then
   * our own status, whose retained copy is now this birth, so any offline status after it is a
   * stale will. A refusal by the broker (its ACL: reason 135, not authorized) is logged as one
   * error naming the topic and what to check, and the set-up is tried again on the same
   * connection after the reconnect backoff's delay (growing to its cap), so a fixed ACL is picked
   * up without a restart and a wrong one costs one line per delay, not a loop.
   */
  private async setUpSession(): Promise<void> {
    const link = this.link;
    if (!link?.connected || this.stopping) return;
    try {
      await link.subscribe([this.t('cmd')]);
      await this.publishStatus();
      await link.subscribe([this.t('status')]);
      if (this.setupRefusals > 0) this.log({ level: 'info', event: 'session-authorized', after: this.setupRefusals });
      this.setupRefusals = 0;
    } catch (e) {
      if (e instanceof BrokerRefusal && link.connected && !this.stopping) {
        const delay = backoffDelay(this.setupRefusals++, this.cfg.broker.reconnect);
        this.log({ level: 'error', event: 'mqtt-refused', operation: e.operation, topic: e.topic, reasonCode: e.code, reason: e.reason, message: e.message, hint: this.refusalHint(e), attempt: this.setupRefusals, retryInMs: delay });
        this.setupRetry = setTimeout(() => {
          this.setupRetry = undefined;
          void this.setUpSession();
        }, delay);
        this.setupRetry.unref();
      } else {
        this.log({ level: 'warn', event: 'birth-or-subscribe-failed', message: (e as Error).message });
      }
    }
    this.outbox?.kick();
  }

  private cancelSetupRetry(): void {
    if (this.setupRetry) clearTimeout(this.setupRetry);
    this.setupRetry = undefined;
  }

  /** What to check when the broker refuses one of this device's own topics. */
  private refusalHint(e: BrokerRefusal): string {
    const b = this.cfg.broker;
    const own = `${this.cfg.prefix}/${this.cfg.deviceId}/…`;
    if (e.code !== 135) return `the broker refused ${e.topic}; check its limits and ACL for ${own}`;
    const cn = certificateCommonName(b.cert);
    if (cn !== undefined && cn !== this.cfg.deviceId) {
      return `the client certificate's CN is ${JSON.stringify(cn)} but the device id is ${JSON.stringify(this.cfg.deviceId)} (${this.cfg.deviceIdSource}): a broker that takes the identity from the certificate (use_identity_as_username) lets a device use only ${this.cfg.prefix}/<its CN>/…, so the certificate's CN must equal the device id — set deviceId to ${JSON.stringify(cn)} or issue a certificate with CN=${this.cfg.deviceId}`;
    }
    if (cn !== undefined) return `the broker's ACL does not allow ${own} for the identity ${JSON.stringify(cn)} (the certificate's CN, which equals the device id): check the ACL (docs/mqtt-security.md) and the topic prefix (${this.cfg.prefix})`;
    return `the broker's ACL does not allow ${own} for this client${b.username !== undefined ? ` (user ${b.username})` : ''}: check the ACL and the topic prefix (${this.cfg.prefix})`;
  }

  private statusObject(): Status {
    const models: NonNullable<Status['models']> = {};
    for (const m of this.store.listModels()) {
      const v = m.active !== null ? this.store.activeVersion(m.name) : undefined;
      if (v) models[m.name] = { version: v.version, kind: v.kind, ...(this.store.pendingActivation(m.name)?.version === v.version ? { pending: true } : {}) };
    }
    return {
      online: true,
      deviceId: this.cfg.deviceId,
      seq: this.seq,
      at: new Date().toISOString(),
      protocol: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      device: deviceFacts(this.cpu, this.cfg.deviceId),
      profile: { name: this.profile.profile.name, reason: this.profile.reason },
      models,
      job: this.current ? { cmdId: this.current.job.cmdId, type: this.current.job.type } : null,
      queue: this.store.countJobs('queued'),
    };
  }

  /**
   * The offline status (will and clean stop): the birth's facts with online false, so a
   * controller that starts after the device went away still knows what it was.
   */
  private offlineStatus(reason: string): Status & { reason: string } {
    return { ...this.statusObject(), online: false, job: null, at: new Date().toISOString(), reason };
  }

  /** The retained birth (also republished when the job or queue changes). */
  private publishStatus(): Promise<void> {
    if (!this.link?.connected || this.stopping) return Promise.resolve();
    return this.link.publish(this.t('status'), JSON.stringify(this.statusObject()), { qos: 1, retain: true, timeoutMs: 10_000 });
  }

  private refreshStatus(): void {
    this.publishStatus().catch((e: Error) => this.log({ level: 'debug', event: 'status-not-published', message: e.message }));
  }

  private onMessage(t: string, payload: Buffer, packet: IPublishPacket): void {
    try {
      if (t === this.t('cmd')) this.onCommand(payload, packet);
      else if (t === this.t('status')) this.onStatus(payload);
    } catch (e) {
      this.log({ level: 'error', event: 'message-failed', topic: t, message: (e as Error).message, stack: (e as Error).stack });
    }
  }

  /** An offline status while connected is a stale will of an earlier connection: say online again. */
  private onStatus(payload: Buffer): void {
    if (this.stopping || payload.length === 0) return;
    const s = parseStatus(payload);
    if (!s.ok || s.value.online || s.value.deviceId !== this.cfg.deviceId) return;
    this.log({ level: 'warn', event: 'stale-will', seq: s.value.seq, current: this.seq });
    this.refreshStatus();
  }

  // ---- commands -------------------------------------------------------------------------------

  private reply(cmdId: string, type: string | undefined, state: ReplyState, extra: Partial<Pick<Reply, 'progress' | 'stage' | 'result' | 'error'>> = {}): Reply {
    return { cmdId, deviceId: this.cfg.deviceId, ...(type ? { type } : {}), state, ...extra, at: new Date().toISOString() };
  }

  /** The reply on the device's reply topic, and on the command's response topic if it gave one. */
  private replyMessages(reply: Reply | unknown, replyTo?: ReplyTo): OutboxMessage[] {
    const payload = JSON.stringify(reply);
    const props = replyTo?.correlationData ? { properties: { correlationData: replyTo.correlationData } } : {};
    // A controller that names the device's own reply topic as the response topic gets one copy.
    if (replyTo?.topic === this.t('reply')) return [{ topic: replyTo.topic, payload, kind: 'reply', ...props }];
    const out: OutboxMessage[] = [{ topic: this.t('reply'), payload, kind: 'reply' }];
    if (replyTo) out.push({ topic: replyTo.topic, payload, kind: 'reply', ...props });
    return out;
  }

  /** Sends without recording (rejections, current states): a repeat is answered afresh. */
  private send(messages: OutboxMessage[]): void {
    for (const m of messages) this.store.enqueueOutbox(m);
    this.outbox?.kick();
  }

  private replyToOf(packet: IPublishPacket): ReplyTo | undefined {
    const p = packet.properties;
    if (!p?.responseTopic) return undefined;
    const rt = p.responseTopic;
    if (rt === '' || rt.includes('+') || rt.includes('#') || rt.startsWith('$') || rt.length > 1024) {
      this.log({ level: 'warn', event: 'response-topic-ignored', responseTopic: rt.slice(0, 200), why: 'a response topic must be a plain topic name (no wildcards, not $…)' });
      return undefined;
    }
    return { topic: rt, ...(p.correlationData ? { correlationData: Buffer.from(p.correlationData).toString('base64') } : {}) };
  }

  private onCommand(payload: Buffer, packet: IPublishPacket): void {
    const replyTo = this.replyToOf(packet);
    const expiry = packet.properties?.messageExpiryInterval;
    const parsed = parseCommand(payload, this.cfg.maxCommandBytes);
    if (!parsed.ok) {
      const id = parsed.id ?? sniffId(payload) ?? 'unknown';
      this.log({ level: 'warn', event: 'command-rejected', cmdId: id, code: parsed.code, message: parsed.error.slice(0, 500), bytes: payload.length });
      this.send(this.replyMessages(this.reply(id, undefined, 'rejected', { error: { code: parsed.code, message: parsed.error } }), replyTo));
      return;
    }
    const cmd = parsed.value;
    this.log({ level: 'info', event: 'command', cmdId: cmd.id, type: cmd.type, ...(expiry !== undefined ? { messageExpiryInterval: expiry } : {}), ...(packet.dup ? { dup: true } : {}) });

    const reject = (code: string, message: string) => {
      this.log({ level: 'warn', event: 'command-rejected', cmdId: cmd.id, type: cmd.type, code, message });
      this.send(this.replyMessages(this.reply(cmd.id, cmd.type, 'rejected', { error: { code, message } }), replyTo));
    };
    const outbox = this.store.outboxState();
    if (outbox.full) {
      // Final replies and reports are never dropped, so no command is answered (a status, a
      // repeat's stored reply) nor run until the broker has taken some; the rejection itself is
      // droppable, so a flood of commands cannot grow the outbox.
      return reject('E_OUTBOX_FULL', `${outbox.messages} messages (${outbox.bytes} bytes) wait for the broker's acknowledgement, at the outbox cap (config outbox.maxMessages / outbox.maxBytes); send it again later`);
    }

    const seen = this.store.commandSeen(cmd.id);
    if (seen) return this.answerRepeat(cmd, seen.reply, replyTo);

    if (IMMEDIATE.has(cmd.type)) {
      let reply: Reply;
      try {
        reply = this.reply(cmd.id, cmd.type, 'succeeded', { result: this.immediate(cmd) });
      } catch (e) {
        reply = this.reply(cmd.id, cmd.type, 'failed', { error: { code: isEdgeqError(e) ? e.code : 'E_INTERNAL', message: e instanceof Error ? e.message : String(e) } });
      }
      this.store.answerCommand(cmd.id, reply, this.replyMessages(reply, replyTo));
      this.outbox?.kick();
      return;
    }

    const jobs = this.store.countJobs();
    if (jobs >= this.cfg.queueMax + 1) {
      return reject('E_QUEUE_FULL', `the job queue is full (${this.store.countJobs('queued')} waiting, limit ${this.cfg.queueMax} — config queue.max); send it again later`);
    }
    if (cmd.type === 'import') {
      try {
        const a = (cmd as Command<'import'>).args;
        checkSource(a.source, this.cfg.import.allow);
        if (a.labels !== undefined) checkSource(a.labels, this.cfg.import.allow);
      } catch (e) {
        return reject(isEdgeqError(e) ? e.code : 'E_ARGUMENT', (e as Error).message);
      }
    }
    const accepted = this.reply(cmd.id, cmd.type, 'accepted', { result: { position: jobs } });
    this.store.acceptJob(
      { cmdId: cmd.id, type: cmd.type, args: cmd.args, ...(replyTo ? { replyTo } : {}), ...(expiry !== undefined ? { expiresAt: Date.now() + expiry * 1000 } : {}) },
      accepted,
      this.replyMessages(accepted, replyTo),
    );
    this.outbox?.kick();
    this.refreshStatus();
    setImmediate(() => this.pump());
  }

  /** A command id seen before: its recorded final answer again, or where its job is now. */
  private answerRepeat(cmd: Command, stored: unknown, replyTo?: ReplyTo): void {
    const state = (stored as { state?: ReplyState }).state;
    if (state !== undefined && !TERMINAL.has(state)) {
      const job = this.store.getJob(cmd.id);
      const r = this.current;
      if (job && r && r.job.cmdId === cmd.id) {
        this.send(this.replyMessages(this.reply(cmd.id, job.type, 'running', { progress: r.progress, stage: r.stage }), replyTo));
        return;
      }
      if (job?.state === 'queued') {
        const position = this.store.listJobs().findIndex((j) => j.cmdId === cmd.id);
        this.send(this.replyMessages(this.reply(cmd.id, job.type, 'queued', { result: { position } }), replyTo));
        return;
      }
    }
    this.log({ level: 'info', event: 'command-repeated', cmdId: cmd.id, state: state ?? null });
    this.send(this.replyMessages(stored, replyTo));
  }

  private immediate(cmd: Command): unknown {
    switch (cmd.type) {
      case 'status':
        return { ...this.statusObject(), process: processFacts() };
      case 'detect':
        return detectReport(this.cpu);
      case 'capture':
        return this.captureCommand((cmd as Command<'capture'>).args);
      case 'cancel':
        return this.cancelCommand(cmd.id, (cmd as Command<'cancel'>).args.cmdId);
      case 'config':
        return this.configCommand((cmd as Command<'config'>).args.set as Overrides);
      default:
        throw new EdgeqError('E_COMMAND_UNKNOWN', `${cmd.type} is not answered at once`);
    }
  }

  private captureCommand(a: Command<'capture'>['args']): unknown {
    const patch: Partial<CapturePolicy> = {};
    if (a.rate !== undefined) patch.rate = a.rate;
    if (a.maxSamples !== undefined) patch.maxSamples = a.maxSamples;
    if (a.maxBytes !== undefined) patch.maxBytes = a.maxBytes;
    if (a.retentionDays !== undefined) patch.retentionMs = Math.round(a.retentionDays * 86_400_000);
    if (a.action === 'stats' && Object.keys(patch).length) throw new EdgeqError('E_ARGUMENT', 'capture stats changes nothing: drop rate, maxSamples, maxBytes and retentionDays, or use action "set"');
    if (a.action === 'start') patch.enabled = true;
    if (a.action === 'stop') patch.enabled = false;
    const policy = Object.keys(patch).length ? this.store.setPolicy(a.model, patch) : this.store.getPolicy(a.model);
    return {
      model: a.model,
      action: a.action,
      policy,
      stats: this.store.captureStats(a.model),
      calibration: this.store.countSamples(a.model, 'calibration'),
      holdout: this.store.countSamples(a.model, 'holdout'),
      ...(this.cfg.endpoint === false || !this.cfg.capture.enabled ? { note: 'the local endpoint does not capture on this device (--no-endpoint or capture.enabled false)' } : {}),
    };
  }

  private cancelCommand(selfId: string, target: string): unknown {
    const job = this.store.getJob(target);
    if (!job) {
      const seen = this.store.commandSeen(target);
      const state = (seen?.reply as { state?: string } | undefined)?.state;
      throw new EdgeqError('E_JOB_UNKNOWN', seen ? `command ${target} has already finished (${state ?? 'answered'}); nothing to cancel` : `no queued or running job for command ${target}`);
    }
    if (job.state === 'queued') {
      const reply = this.reply(target, job.type, 'cancelled', { error: { code: 'E_CANCELLED', message: `cancelled by command ${selfId} before it started` } });
      this.store.answerCommand(target, reply, this.replyMessages(reply, job.replyTo ?? undefined));
      this.refreshStatus();
      return { cmdId: target, was: 'queued', state: 'cancelled' };
    }
    const r = this.current;
    if (!r || r.job.cmdId !== target) throw new EdgeqError('E_JOB_UNKNOWN', `command ${target} is not running on this agent`);
    r.abort.abort('cancel');
    return { cmdId: target, was: 'running', state: 'cancelling', note: 'the job stops at its next progress point; its own reply says cancelled (or succeeded, if it finished first)' };
  }

  private configCommand(set: Overrides): unknown {
    const changes = Object.fromEntries(Object.entries(set).filter(([, v]) => v !== undefined)) as Overrides;
    if (Object.keys(changes).length) {
      const next = { ...this.cfg.overrides, ...changes };
      saveOverrides(this.cfg.stateDir, next);
      applyOverrides(this.cfg, changes);
      this.log({ level: 'info', event: 'config-changed', changes });
    }
    return {
      applied: changes,
      overrides: this.cfg.overrides,
      effective: {
        'quantize.method': this.cfg.quantize.method ?? null,
        'quantize.maxDrop': this.cfg.quantize.maxDrop ?? null,
        'quantize.biasCorrection': this.cfg.quantize.biasCorrection ?? null,
        threads: this.cfg.threads ?? null,
      },
      ...('threads' in changes && this.endpoint ? { note: 'threads applies to the next job now and to the local endpoint after a restart' } : {}),
    };
  }

  // ---- jobs -----------------------------------------------------------------------------------

  /** Starts the next queued job unless one runs or the daemon is stopping. */
  private pump(): void {
    try {
      this.startNext();
    } catch (e) {
      this.log({ level: 'error', event: 'queue-failed', message: (e as Error).message, stack: (e as Error).stack });
    }
  }

  private startNext(): void {
    if (this.current || this.stopping) return;
    const next = this.store.listJobs().find((j) => j.state === 'queued');
    if (!next) return;
    if (next.expiresAt !== null && Date.now() > next.expiresAt) {
      const reply = this.reply(next.cmdId, next.type, 'failed', { error: { code: 'E_EXPIRED', message: `the command's message expiry passed ${Math.round((Date.now() - next.expiresAt) / 1000)} s before it could start; it was not run` } });
      this.store.answerCommand(next.cmdId, reply, this.replyMessages(reply, next.replyTo ?? undefined));
      this.log({ level: 'warn', event: 'job-expired', cmdId: next.cmdId, type: next.type });
      this.outbox?.kick();
      setImmediate(() => this.pump());
      return;
    }
    this.store.startJob(next.cmdId);
    const r: Running = { job: next, abort: new AbortController(), progress: 0, stage: 'starting', lastSent: 0, lastStage: '', done: Promise.resolve() };
    this.current = r;
    this.log({ level: 'info', event: 'job-started', cmdId: next.cmdId, type: next.type });
    this.progress(r, 'starting', 0);
    this.refreshStatus();
    r.done = this.runOne(r).finally(() => {
      this.current = undefined;
      this.outbox?.kick();
      this.refreshStatus();
      setImmediate(() => this.pump());
    });
  }

  private async runOne(r: Running): Promise<void> {
    const { job } = r;
    let outcome: JobOutcome | undefined;
    let error: unknown;
    try {
      if (!JOB_TYPES.has(job.type)) throw new EdgeqError('E_COMMAND_UNKNOWN', `${job.type} is not a job this agent runs`);
      const args = COMMAND_ARGS[job.type as keyof typeof COMMAND_ARGS].safeParse(job.args);
      if (!args.success) throw new EdgeqError('E_COMMAND_INVALID', `the queued ${job.type} job's arguments no longer pass the contract`);
      outcome = await runJob({ id: job.cmdId, type: job.type, args: args.data } as Command, {
        store: this.store,
        stateDir: this.cfg.stateDir,
        deviceId: this.cfg.deviceId,
        cpu: this.cpu,
        quantize: { ...this.cfg.quantize },
        threads: this.cfg.threads,
        importCfg: this.cfg.import,
        deployCfg: this.cfg.deploy,
        signal: r.abort.signal,
        progress: (stage, fraction) => this.progress(r, stage, fraction),
        onRun: (runId) => {
          r.runId = runId;
          this.store.setJobRun(job.cmdId, runId);
        },
      });
    } catch (e) {
      error = e;
    }
    this.outbox?.dropVolatile(job.cmdId);
    try {
      const replyTo = job.replyTo ?? undefined;
      if (outcome) {
        const reply = this.reply(job.cmdId, job.type, 'succeeded', { progress: 1, result: outcome.result });
        const messages = this.replyMessages(reply, replyTo);
        // The report first: whoever sees `succeeded` can already have the report.
        if (outcome.report) messages.unshift({ topic: this.t('report'), payload: JSON.stringify(outcome.report), kind: 'report' });
        this.store.answerCommand(job.cmdId, reply, messages);
        this.log({ level: 'info', event: 'job-succeeded', cmdId: job.cmdId, type: job.type, runId: r.runId ?? null });
        return;
      }
      const code = isEdgeqError(error) ? error.code : 'E_INTERNAL';
      const message = error instanceof Error ? error.message : String(error);
      if (code === 'E_CANCELLED' && r.abort.signal.reason === 'shutdown') {
        this.store.requeueJob(job.cmdId);
        this.log({ level: 'info', event: 'job-requeued', cmdId: job.cmdId, type: job.type, runId: r.runId ?? null });
        return;
      }
      const state: ReplyState = code === 'E_CANCELLED' ? 'cancelled' : 'failed';
      const reply = this.reply(job.cmdId, job.type, state, { error: { code, message }, ...(r.runId ? { result: { runId: r.runId } } : {}) });
      this.store.answerCommand(job.cmdId, reply, this.replyMessages(reply, replyTo));
      this.log({ level: state === 'failed' ? 'warn' : 'info', event: `job-${state}`, cmdId: job.cmdId, type: job.type, code, message, ...(code === 'E_INTERNAL' && error instanceof Error ? { stack: error.stack } : {}) });
    } catch (e) {
      this.log({ level: 'error', event: 'job-answer-failed', cmdId: job.cmdId, message: (e as Error).message });
    }
  }

  /** A `running` reply with progress, at most every PROGRESS_INTERVAL_MS per stage (sent directly; dropped while offline). */
  private progress(r: Running, stage: string, fraction: number): void {
    r.progress = Math.min(1, Math.max(0, Math.round(fraction * 1e4) / 1e4));
    r.stage = stage;
    const now = Date.now();
    if (stage === r.lastStage && now - r.lastSent < PROGRESS_INTERVAL_MS) return;
    r.lastSent = now;
    r.lastStage = stage;
    if (!this.outbox || !this.link?.connected) return;
    const reply = this.reply(r.job.cmdId, r.job.type, 'running', { progress: r.progress, stage });
    for (const m of this.replyMessages(reply, r.job.replyTo ?? undefined)) {
      this.outbox.sendVolatile({ topic: m.topic, payload: m.payload, properties: publishProperties(m.properties), group: r.job.cmdId });
    }
  }
}
