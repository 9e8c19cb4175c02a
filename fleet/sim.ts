/**
 * A simulated device: a lightweight MQTT client that speaks the device side of the wire
 * contract (agent/protocol) without quantizing anything. Retained birth with a seq and a
 * matching Last Will; commands validated with parseCommand (bad ones rejected), answered
 * accepted → running → succeeded (or as `behaviour` says), idempotent by command id; optimize
 * and quantize publish a run report that passes parseReport. For the fleet tests and the scale
 * script: each device is its own connection, since each needs its own will.
 */
import { randomUUID } from 'node:crypto';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { parseCommand, PROTOCOL_VERSION, REPORT_SCHEMA, topic, type Command, type Report, type Reply, type Status } from '../agent/protocol/index.js';

export type SimOutcome =
  | { state: 'succeeded'; result?: unknown; report?: boolean }
  | { state: 'failed' | 'rejected' | 'cancelled'; code?: string; message?: string }
  /** Never answer (to test timeouts). */
  | { state: 'ignore' };

export interface SimDeviceOptions {
  broker: string;
  prefix: string;
  deviceId: string;
  /** seq of the first birth (default 1); each reconnect's birth adds one. */
  seq?: number;
  arch?: string;
  profile?: string;
  /** Extra mqtt.js options (TLS, credentials). */
  mqtt?: IClientOptions;
  /** What to do with a valid command (default: succeed; optimize/quantize also publish a report). */
  behaviour?: (cmd: Command) => SimOutcome;
  /** Running-progress replies before the terminal one (default 1). */
  progressSteps?: number;
  /** Delay between replies, ms (default 0). */
  stepDelayMs?: number;
}

type ReplyBody = { cmdId: string; state: Reply['state']; type?: string; progress?: number; stage?: string; result?: unknown; error?: { code: string; message: string } };

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A run report of `model` on `deviceId` that passes parseReport, with plausible figures. */
export function sampleReport(deviceId: string, model = 'fmnist@v1', overrides: { arch?: string; profile?: string; createdAt?: string; id?: string } = {}): Report {
  const arch = overrides.arch ?? 'arm64';
  const profile = overrides.profile ?? (arch === 'arm64' ? 'qnnpack' : 'fbgemm');
  // Figures vary with the id so that tables are not all alike, deterministically.
  const id = overrides.id ?? randomUUID();
  const h = parseInt(id.replace(/[^0-9a-f]/gi, '').slice(0, 6) || '7', 16) / 0xffffff;
  const lat = (p50: number) => ({ p50Ms: p50, p90Ms: p50 * 1.2, p99Ms: p50 * 1.6, meanMs: p50 * 1.05, minMs: p50 * 0.9, throughput: 1000 / p50, loadMs: 60, runs: 100, peakRssBytes: 90_000_000 });
  const fp32P50 = 0.2 + h * 0.05;
  const int8P50 = fp32P50 / (1.6 + h);
  const fp32Top1 = 0.93;
  const int8Top1 = 0.93 - Math.round(h * 10) / 1000;
  return {
    schema: REPORT_SCHEMA,
    id,
    createdAt: overrides.createdAt ?? new Date().toISOString(),
    agent: { name: 'edgeq', version: '0.1.0' },
    device: { id: deviceId, hostname: deviceId, arch, cpu: arch === 'arm64' ? 'Cortex-A72' : 'AMD EPYC', cores: 4, isa: arch === 'arm64' ? ['neon', 'dotprod'] : ['avx2'], os: 'linux', node: process.version, onnxruntime: '1.30.0' },
    model: { name: model, sha256: 'a'.repeat(64), sizeBytes: 517_222 },
    int8: { name: `${model.replace(/@v\d+$/, '')}.int8.onnx`, sha256: 'b'.repeat(64), sizeBytes: 136_806 },
    quantization: {
      profile,
      perChannel: profile === 'fbgemm',
      reduceRange: false,
      activations: 'uint8',
      method: 'histogram',
      reason: arch === 'arm64' ? 'ARM64: qnnpack' : 'x86-64 with AVX2: fbgemm',
      calibrationSamples: 500,
      biasCorrection: false,
      int8Ops: { QLinearConv: 8, QGemm: 1 },
      floatOps: {},
      keptFloat: [],
    },
    accuracy: { source: 'eval-data', samples: 1000, fp32Top1, int8Top1, dropPoints: Math.round((fp32Top1 - int8Top1) * 1000) / 10, agreement: 0.99, sqnrDb: 38, cosine: 0.9999 },
    latency: { threads: 1, batch: 1, fp32: lat(fp32P50), int8: lat(int8P50), speedup: fp32P50 / int8P50 },
    sizeRatio: 136_806 / 517_222,
    timingsMs: { quantize: 1200, eval: 400, bench: 800, total: 2500 },
  };
}

export class SimulatedDevice {
  readonly deviceId: string;
  /** Valid commands received, in order. */
  readonly commands: Command[] = [];
  /** Reports published. */
  readonly reports: Report[] = [];
  private seq: number;
  private readonly answers = new Map<string, Reply>();
  private readonly opts: SimDeviceOptions;
  private client!: MqttClient;
  private stopped = false;

  private constructor(opts: SimDeviceOptions) {
    this.opts = opts;
    this.deviceId = opts.deviceId;
    this.seq = opts.seq ?? 1;
  }

  /** Connects, publishes the retained birth and subscribes to the device's cmd topic. */
  static async start(opts: SimDeviceOptions): Promise<SimulatedDevice> {
    const d = new SimulatedDevice(opts);
    await d.connect();
    return d;
  }

  get currentSeq(): number {
    return this.seq;
  }

  private t(channel: 'status' | 'cmd' | 'reply' | 'report'): string {
    return topic(this.opts.prefix, this.deviceId, channel);
  }

  birth(): Status {
    const arch = this.opts.arch ?? 'arm64';
    return {
      online: true,
      deviceId: this.deviceId,
      seq: this.seq,
      at: new Date().toISOString(),
      protocol: PROTOCOL_VERSION,
      agentVersion: '0.1.0-sim',
      device: { hostname: this.deviceId, arch, cpu: arch === 'arm64' ? 'Cortex-A72' : 'AMD EPYC', cores: 4, isa: arch === 'arm64' ? ['neon'] : ['avx2'], os: 'linux', node: process.version, onnxruntime: '1.30.0' },
      profile: { name: this.opts.profile ?? (arch === 'arm64' ? 'qnnpack' : 'fbgemm'), reason: 'simulated' },
      models: { fmnist: { version: 1, kind: 'fp32' } },
      job: null,
      queue: 0,
    };
  }

  will(seq = this.seq): Status {
    return { online: false, deviceId: this.deviceId, seq, at: new Date().toISOString(), protocol: PROTOCOL_VERSION };
  }

  private async connect(): Promise<void> {
    const willFor = () => ({ topic: this.t('status'), payload: Buffer.from(JSON.stringify(this.will())), qos: 1 as const, retain: true });
    const client = mqtt.connect(this.opts.broker, {
      protocolVersion: 5,
      clientId: `edgeq-sim-${this.deviceId}-${randomUUID().slice(0, 8)}`,
      clean: true,
      connectTimeout: 30_000,
      reconnectPeriod: 1000,
      keepalive: 60,
      ...this.opts.mqtt,
      will: willFor(),
    });
    this.client = client;
    let first = true;
    client.on('reconnect', () => {
      // A new session is a new birth: its will must carry the new seq.
      this.seq++;
      client.options.will = willFor();
    });
    client.on('connect', () => {
      if (!first) void this.announce().catch(() => undefined);
    });
    client.on('error', () => undefined);
    // Commands run one after another, off mqtt.js' packet pump: the pump waits for handleMessage,
    // and the replies' PUBACKs come through that same pump.
    let queue = Promise.resolve();
    client.handleMessage = (packet: IPublishPacket, done) => {
      queue = queue.then(() => this.onCommand(packet)).catch(() => undefined);
      done();
    };
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => {
        client.end(true);
        reject(e);
      };
      client.once('error', onErr);
      client.once('connect', () => {
        client.off('error', onErr);
        resolve();
      });
    });
    first = false;
    await this.announce();
  }

  private async announce(): Promise<void> {
    await this.client.subscribeAsync(this.t('cmd'), { qos: 1 });
    await this.client.publishAsync(this.t('status'), JSON.stringify(this.birth()), { qos: 1, retain: true });
  }

  private async onCommand(packet: IPublishPacket): Promise<void> {
    const responseTopic = packet.properties?.responseTopic;
    const correlationData = packet.properties?.correlationData;
    const send = async (r: ReplyBody) => {
      const reply: Reply = { ...r, deviceId: this.deviceId, at: new Date().toISOString() };
      const payload = JSON.stringify(reply);
      await this.client.publishAsync(this.t('reply'), payload, { qos: 1 });
      if (responseTopic && responseTopic !== this.t('reply')) {
        await this.client.publishAsync(responseTopic, payload, { qos: 1, properties: correlationData ? { correlationData } : {} });
      }
      return reply;
    };
    const parsed = parseCommand(packet.payload);
    if (!parsed.ok) {
      await send({ cmdId: parsed.id ?? 'unknown', state: 'rejected', error: { code: parsed.code, message: parsed.error } });
      return;
    }
    const cmd = parsed.value;
    const done = this.answers.get(cmd.id);
    if (done) {
      await send(done as ReplyBody);
      return;
    }
    this.commands.push(cmd);
    const outcome = this.opts.behaviour?.(cmd) ?? { state: 'succeeded', report: cmd.type === 'optimize' || cmd.type === 'quantize' };
    if (outcome.state === 'ignore') return;
    if (outcome.state === 'rejected') {
      this.answers.set(cmd.id, await send({ cmdId: cmd.id, type: cmd.type, state: 'rejected', error: { code: outcome.code ?? 'E_REJECTED', message: outcome.message ?? 'rejected by the simulated device' } }));
      return;
    }
    const step = this.opts.stepDelayMs ?? 0;
    await send({ cmdId: cmd.id, type: cmd.type, state: 'accepted' });
    const steps = this.opts.progressSteps ?? 1;
    for (let i = 1; i <= steps; i++) {
      if (step) await sleep(step);
      await send({ cmdId: cmd.id, type: cmd.type, state: 'running', progress: i / (steps + 1), stage: `step ${i}` });
    }
    if (step) await sleep(step);
    if (outcome.state === 'succeeded') {
      let result = outcome.result ?? (cmd.type === 'status' ? this.birth() : {});
      if (outcome.report) {
        const report = await this.publishReport('model' in cmd.args && typeof cmd.args.model === 'string' ? `${cmd.args.model}@v1` : undefined);
        result = { reportId: report.id, ...(typeof result === 'object' && result !== null ? result : {}) };
      }
      this.answers.set(cmd.id, await send({ cmdId: cmd.id, type: cmd.type, state: 'succeeded', result }));
    } else {
      this.answers.set(cmd.id, await send({ cmdId: cmd.id, type: cmd.type, state: outcome.state, error: { code: outcome.code ?? 'E_FAILED', message: outcome.message ?? 'failed on the simulated device' } }));
    }
  }

  /** Publishes a valid run report (QoS 1) and returns it. */
  async publishReport(model?: string): Promise<Report> {
    const report = sampleReport(this.deviceId, model, { arch: this.opts.arch, profile: this.opts.profile });
    await this.client.publishAsync(this.t('report'), JSON.stringify(report), { qos: 1 });
    this.reports.push(report);
    return report;
  }

  /** Publishes any payload on one of the device's topics (for malformed-message tests). */
  async publishRaw(channel: 'status' | 'reply' | 'report', payload: string, retain = false): Promise<void> {
    await this.client.publishAsync(this.t(channel), payload, { qos: 1, retain });
  }

  /** A clean shutdown: retained offline status with the current seq, then DISCONNECT (no will). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.client.connected) await this.client.publishAsync(this.t('status'), JSON.stringify(this.will()), { qos: 1, retain: true }).catch(() => undefined);
    await this.client.endAsync().catch(() => undefined);
  }

  /** Dies without DISCONNECT: the broker publishes the will. */
  async crash(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.client.options.reconnectPeriod = 0;
    this.client.stream.destroy();
    await this.client.endAsync(true).catch(() => undefined);
  }
}

/** Removes the retained status of each device (an empty retained message), so a test leaves nothing behind. */
export async function clearRetained(broker: string, prefix: string, deviceIds: Iterable<string>, extra: IClientOptions = {}): Promise<void> {
  const client = await mqtt.connectAsync(broker, { protocolVersion: 5, clean: true, reconnectPeriod: 0, ...extra }, false);
  try {
    await Promise.all([...deviceIds].map((id) => client.publishAsync(topic(prefix, id, 'status'), '', { qos: 1, retain: true })));
  } finally {
    await client.endAsync();
  }
}
