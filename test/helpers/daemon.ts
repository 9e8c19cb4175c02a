/**
 * For the daemon tests: `edgeq run` as a child process, a third-party MQTT 5 client that
 * watches a device's topics and sends it commands, and state directories prepared with the
 * fixture model and samples.
 */
import type { ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { prepareFixtureState } from '../../tools/fixture-state.js';
import { CLI, tempDir } from './fixtures.js';

export const WAIT_MS = 120_000;

export function uniqueId(prefix = 'test'): string {
  return `${prefix}-${randomBytes(5).toString('hex')}`;
}

export interface Msg {
  topic: string;
  text: string;
  packet: IPublishPacket;
  /** The payload as JSON, or undefined. */
  json: Record<string, unknown> | undefined;
}

/** A plain mqtt.js client standing in for the fleet: records everything it receives. */
export class Observer {
  readonly messages: Msg[] = [];
  private listeners = new Set<() => void>();

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      let json: Record<string, unknown> | undefined;
      try {
        json = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
      } catch {
        json = undefined;
      }
      this.messages.push({ topic, text: payload.toString('utf8'), packet, json });
      for (const l of [...this.listeners]) l();
    });
    client.on('error', () => {});
  }

  static async connect(t: ExecutionContext, url: string, opts: IClientOptions = {}): Promise<Observer> {
    const client = mqtt.connect(url, { protocolVersion: 5, clientId: uniqueId('observer'), reconnectPeriod: 500, connectTimeout: 5000, ...opts });
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
    });
    const o = new Observer(client);
    t.teardown(() => new Promise<void>((resolve) => client.end(true, {}, () => resolve())));
    return o;
  }

  subscribe(filters: string | string[]): Promise<void> {
    return new Promise((resolve, reject) => this.client.subscribe(filters, { qos: 1 }, (e) => (e ? reject(e) : resolve())));
  }

  publish(topic: string, payload: string | Buffer, opts: mqtt.IClientPublishOptions = {}): Promise<void> {
    return new Promise((resolve, reject) => this.client.publish(topic, payload, { qos: 1, ...opts }, (e) => (e ? reject(e) : resolve())));
  }

  /** The first message from index `from` on that satisfies `pred`, waiting up to `timeoutMs` for it. */
  waitFor(pred: (m: Msg) => boolean, what: string, from = 0, timeoutMs = WAIT_MS): Promise<Msg> {
    return new Promise((resolve, reject) => {
      let i = from;
      const check = () => {
        for (; i < this.messages.length; i++) {
          if (pred(this.messages[i])) {
            cleanup();
            resolve(this.messages[i]);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${what}; received:\n${this.messages.slice(from).map((m) => `${m.topic} ${m.text.slice(0, 300)}`).join('\n')}`));
      }, timeoutMs);
      const listener = () => void check();
      const cleanup = () => {
        clearTimeout(timer);
        this.listeners.delete(listener);
      };
      this.listeners.add(listener);
      check();
    });
  }

  /** Messages on `topic` whose JSON satisfies `pred`. */
  all(topic: string, pred: (j: Record<string, unknown>) => boolean = () => true): Msg[] {
    return this.messages.filter((m) => m.topic === topic && m.json !== undefined && pred(m.json));
  }
}

/** A device's topics under a test prefix. */
export interface Device {
  id: string;
  prefix: string;
  status: string;
  cmd: string;
  reply: string;
  report: string;
}

export function device(): Device {
  const id = uniqueId('dev');
  const prefix = `${uniqueId('edgeq-test')}/v1`;
  const t = (c: string) => `${prefix}/${id}/${c}`;
  return { id, prefix, status: t('status'), cmd: t('cmd'), reply: t('reply'), report: t('report') };
}

/** Watches everything of one device; clears its retained status when the test ends. */
export async function watch(t: ExecutionContext, url: string, d: Device, opts: IClientOptions = {}): Promise<Observer> {
  const o = await Observer.connect(t, url, opts);
  await o.subscribe(`${d.prefix}/${d.id}/#`);
  t.teardown(async () => {
    // An empty retained message removes the retained status this test created.
    const c = mqtt.connect(url, { protocolVersion: 5, clientId: uniqueId('cleaner'), reconnectPeriod: 0, connectTimeout: 3000 });
    await new Promise<void>((resolve) => {
      c.once('error', () => resolve());
      c.once('connect', () => c.publish(d.status, '', { qos: 1, retain: true }, () => resolve()));
      setTimeout(resolve, 3000).unref();
    });
    c.end(true);
  });
  return o;
}

export interface DaemonProcess {
  child: ChildProcess;
  logs: Array<Record<string, unknown>>;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The first log line (from the start) with this event, waiting for it. */
  waitLog(event: string, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/** `edgeq run --config CONFIG` as a child process; SIGKILLed when the test ends if still running. */
export function spawnDaemon(t: ExecutionContext, config: string, extra: string[] = []): DaemonProcess {
  const child = spawn(process.execPath, [CLI, 'run', '--config', config, ...extra], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGEQ_CONFIG: undefined } });
  const logs: Array<Record<string, unknown>> = [];
  let err = '';
  let pending = '';
  const listeners = new Set<() => void>();
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    err += chunk;
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not a log line
      }
    }
    for (const l of [...listeners]) l();
  });
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let done = false;
  void exited.then(() => {
    done = true;
    for (const l of [...listeners]) l();
  });
  t.teardown(async () => {
    if (!done) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return {
    child,
    logs,
    stderr: () => err,
    exited,
    waitLog(event, timeoutMs = WAIT_MS) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = logs.find((l) => l.event === event);
          if (hit) {
            cleanup();
            resolve(hit);
          } else if (done) {
            cleanup();
            reject(new Error(`the daemon exited before logging ${event}:\n${err.slice(-3000)}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for log event ${event}:\n${err.slice(-3000)}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
  };
}

export interface Prepared {
  dir: string;
  stateDir: string;
  config: string;
}

/**
 * A temp dir with a state directory holding the fixture model as "fmnist" and `samples`
 * labelled test images, and a config file for `device` on `url` (`extra` merged in).
 */
export async function prepare(t: ExecutionContext, url: string, d: Device, extra: Record<string, unknown> = {}, samples = 200): Promise<Prepared> {
  const dir = tempDir(t, 'edgeq-daemon-');
  const stateDir = join(dir, 'state');
  mkdirSync(stateDir, { recursive: true });
  if (samples > 0) await prepareFixtureState(stateDir, dir, samples, 'test');
  const { broker: extraBroker, ...rest } = extra as { broker?: Record<string, unknown> };
  const config = join(dir, 'config.json');
  writeFileSync(
    config,
    JSON.stringify({
      deviceId: d.id,
      prefix: d.prefix,
      stateDir,
      threads: 1,
      broker: { url, sessionExpiry: 120, keepalive: 10, reconnect: { baseMs: 200, capMs: 1000 }, ...extraBroker },
      serve: { socket: join(dir, 'edgeq.sock') },
      shutdownTimeoutMs: 10_000,
      ...rest,
    }),
  );
  return { dir, stateDir, config };
}

/** The JSON of a message (asserting there is one). */
export function body(m: Msg): Record<string, unknown> {
  if (!m.json) throw new Error(`not JSON: ${m.text.slice(0, 200)}`);
  return m.json;
}

/** A predicate for a reply to `cmdId`, optionally in one of `states`. */
export function replyTo(d: Device, cmdId: string, ...states: string[]): (m: Msg) => boolean {
  return (m) => m.topic === d.reply && m.json?.cmdId === cmdId && (states.length === 0 || states.includes(m.json.state as string));
}
