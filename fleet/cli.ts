/**
 * `edgeq fleet …`: the fleet controller's command line (bin/edgeq.js sends `edgeq fleet` here).
 *   devices   the fleet from the devices' retained status
 *   send      a command to one device, several, --all or --where; --wait follows the replies
 *   watch     live statuses, replies and reports (the long-running collector)
 *   reports   fp32 vs int8 per device, from the store
 */
import { randomUUID } from 'node:crypto';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { COMMAND_ARGS, DEFAULT_PREFIX, TERMINAL, type CommandType, type Reply, type ReplyState } from '../agent/protocol/index.js';
import { FleetController, stderrLog, type OutgoingCommand } from './controller.js';
import { DEFAULT_BROKER, type BrokerOptions } from './mqtt.js';
import { EXIT_FAILED, EXIT_USAGE, FleetError, formatTime, printJson, printJsonLine, reportError } from './output.js';
import { renderDevices, renderReports, replyLine, reportLine, statusLine } from './render.js';
import { openFleetStore, type DeviceRecord, type FleetStore } from './store/index.js';
import { compileWhere, parseCommandArgs, parseDeviceIds, parseWhere } from './targets.js';

interface CommonArgs extends BrokerOptions {
  db?: string;
  stateDir?: string;
  share?: string;
  clientId?: string;
  json: boolean;
}

const COMMON = {
  broker: { type: 'string', default: process.env.EDGEQ_BROKER ?? DEFAULT_BROKER, defaultDescription: `$EDGEQ_BROKER or ${DEFAULT_BROKER}`, describe: 'MQTT broker URL (mqtt://, mqtts://, ws://, wss://)' },
  prefix: { type: 'string', default: DEFAULT_PREFIX, describe: 'topic root the devices use' },
  'tls-ca': { type: 'string', describe: 'PEM file of the CA(s) to trust (mqtts://)' },
  'tls-cert': { type: 'string', describe: 'PEM client certificate (mutual TLS)' },
  'tls-key': { type: 'string', describe: 'PEM key of --tls-cert' },
  username: { type: 'string', default: process.env.EDGEQ_USERNAME, defaultDescription: '$EDGEQ_USERNAME', describe: 'broker user name' },
  password: { type: 'string', default: process.env.EDGEQ_PASSWORD, defaultDescription: '$EDGEQ_PASSWORD', describe: 'broker password (prefer the variable: arguments show in ps)' },
  db: { type: 'string', describe: 'the store: a postgres://… URL (several controllers, one fleet table) or a SQLite file (default: fleet.db in the state directory; $EDGEQ_FLEET_DB)' },
  'state-dir': { type: 'string', describe: 'directory of the default SQLite store (default $EDGEQ_FLEET_STATE_DIR or ~/.local/state/edgeq-fleet)' },
  share: { type: 'string', describe: 'MQTT 5 shared-subscription group: instances with the same group split the replies and reports ($share/GROUP/…)' },
  'client-id': { type: 'string', describe: 'MQTT client id (watch: fixed per host by default, for its persistent session)' },
  json: { type: 'boolean', default: false, describe: 'JSON output (one object, or one per line for streams)' },
} as const;

const commonOf = (a: CommonArgs) => ({
  broker: a.broker,
  prefix: a.prefix,
  tlsCa: a.tlsCa,
  tlsCert: a.tlsCert,
  tlsKey: a.tlsKey,
  username: a.username,
  password: a.password,
  share: a.share,
  clientId: a.clientId,
});

/** Opens the store and runs `fn`, closing the store after. */
async function withStore<T>(a: CommonArgs, fn: (store: FleetStore) => Promise<T>): Promise<T> {
  const store = await openFleetStore(a.db, a.stateDir);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

// ---------------------------------------------------------------------------------------------
// devices

/** --where given once is a string, repeated an array (declared without `array`, so it never swallows the positionals after it). */
const list = (v: string | string[] | undefined): string[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

interface DevicesArgs extends CommonArgs {
  online: boolean;
  where?: string | string[];
  refresh: boolean;
}

async function devicesCmd(a: DevicesArgs): Promise<void> {
  const where = parseWhere(list(a.where));
  const { filter, test } = compileWhere(where, a.online ? true : undefined);
  await withStore(a, async (store) => {
    if (a.refresh) {
      const c = await FleetController.connect({ ...commonOf(a), store });
      try {
        await c.subscribe({ status: true });
        await c.settle();
      } finally {
        await c.close();
      }
    }
    const devices = (await store.devices(filter)).filter(test);
    if (a.json) printJson(devices);
    else process.stdout.write(renderDevices(devices));
  });
}

// ---------------------------------------------------------------------------------------------
// send

interface SendArgs extends CommonArgs {
  words?: string[];
  all: boolean;
  where?: string | string[];
  wait: boolean;
  timeout: number;
  expire?: number;
  id?: string;
}

/**
 * Checks ARGS against the protocol. A value that looked like a number or boolean but must be a
 * string (a model named "2024") is retried as the text it was typed as.
 */
function commandArgs(type: string, words: readonly string[]): Record<string, unknown> {
  const { args, raw } = parseCommandArgs(words);
  if (type in COMMAND_ARGS && raw.size > 0) {
    const r = COMMAND_ARGS[type as CommandType].safeParse(args);
    if (!r.success) {
      const retry = { ...args };
      for (const issue of r.error.issues) {
        const key = issue.path[0];
        if (typeof key === 'string' && raw.has(key) && typeof retry[key] !== 'string' && typeof retry[key] !== 'object') retry[key] = raw.get(key);
      }
      if (COMMAND_ARGS[type as CommandType].safeParse(retry).success) return FleetController.checkCommand(type, retry);
    }
  }
  return FleetController.checkCommand(type, args);
}

async function resolveTargets(a: SendArgs, store: FleetStore, explicit: string[] | undefined): Promise<string[]> {
  if (explicit) {
    const known = new Map((await store.devices({ ids: explicit })).map((d) => [d.deviceId, d]));
    for (const id of explicit) {
      const d = known.get(id);
      if (!d) stderrLog({ level: 'warn', event: 'device_unknown', deviceId: id, message: `no status from ${id} under ${a.prefix}: sending anyway` });
      else if (d.online === false) stderrLog({ level: 'warn', event: 'device_offline', deviceId: id, message: `${id} is offline: the broker keeps the command for its session until --expire` });
    }
    return explicit;
  }
  const { filter, test } = compileWhere(parseWhere(list(a.where)), true);
  return (await store.devices(filter)).filter(test).map((d: DeviceRecord) => d.deviceId);
}

async function sendCmd(a: SendArgs): Promise<void> {
  const words = (a.words ?? []).map(String);
  const where = list(a.where);
  const byQuery = a.all || where.length > 0;
  const usage = 'edgeq fleet send DEVICE[,DEVICE…] TYPE [ARGS…] | send --all TYPE [ARGS…] | send --where key=value TYPE [ARGS…]';
  if (words.length < (byQuery ? 1 : 2)) throw new FleetError('E_USAGE', `${byQuery ? 'name a command type' : 'name a device and a command type'}: ${usage}`, true);
  const explicit = byQuery ? undefined : parseDeviceIds(words[0]);
  const type = byQuery ? words[0] : words[1];
  const args = commandArgs(type, words.slice(byQuery ? 1 : 2));
  if (!Number.isFinite(a.timeout) || a.timeout <= 0) throw new FleetError('E_ARGUMENT', '--timeout must be a positive number of seconds', true);
  const expire = a.expire ?? Math.ceil(a.timeout);
  if (!Number.isInteger(expire) || expire < 0 || expire > 0xffffffff) throw new FleetError('E_ARGUMENT', '--expire must be a whole number of seconds (0: never)', true);
  const cmd: OutgoingCommand = { id: a.id ?? randomUUID(), type: type as OutgoingCommand['type'], args };
  if (!/^[\x21-\x7e]{1,128}$/.test(cmd.id)) throw new FleetError('E_ARGUMENT', '--id: 1 to 128 printable ASCII characters without spaces', true);

  await withStore(a, async (store) => {
    const c = await FleetController.connect({ ...commonOf(a), store });
    try {
      await c.subscribe({ status: true });
      await c.settle();
      const targets = await resolveTargets(a, store, explicit);
      if (targets.length === 0) throw new FleetError('E_NO_TARGETS', `no online device matches${where.length ? ` --where ${where.join(' --where ')}` : ''} under ${a.prefix}`);
      if (!a.wait) {
        await c.send(targets, cmd, expire);
        if (a.json) printJson({ ok: true, id: cmd.id, type: cmd.type, args: cmd.args, targets });
        else process.stdout.write(`sent ${cmd.type} ${cmd.id} to ${targets.length} device${targets.length === 1 ? '' : 's'}: ${targets.slice(0, 10).join(', ')}${targets.length > 10 ? ', …' : ''}\n`);
        return;
      }
      await waitFor(c, a, cmd, targets, expire);
    } finally {
      await c.close();
    }
  });
}

async function waitFor(c: FleetController, a: SendArgs, cmd: OutgoingCommand, targets: string[], expire: number): Promise<void> {
  const width = Math.min(32, Math.max(...targets.map((t) => t.length)));
  const targetSet = new Set(targets);
  const last = new Map<string, Reply>();
  const seen = new Set<string>();
  const reports = new Set<string>();
  let settle!: () => void;
  let fail!: (e: Error) => void;
  const finished = new Promise<void>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  const terminal = () => [...last.values()].filter((r) => TERMINAL.has(r.state)).length;
  c.on('reply', (deviceId, r) => {
    if (r.cmdId !== cmd.id || !targetSet.has(deviceId)) return;
    const key = `${deviceId}\n${JSON.stringify(r)}`;
    if (seen.has(key)) return;
    seen.add(key);
    const prev = last.get(deviceId);
    if (prev && TERMINAL.has(prev.state)) return; // a repeated answer
    last.set(deviceId, r);
    if (a.json) printJsonLine({ event: 'reply', ...r });
    else process.stdout.write(replyLine(deviceId, r, width) + '\n');
    if (terminal() === targets.length) settle();
  });
  c.on('report', (deviceId, r) => {
    if (!targetSet.has(deviceId) || reports.has(r.id)) return;
    reports.add(r.id);
    if (a.json) printJsonLine({ event: 'report', deviceId, report: r });
    else process.stdout.write(reportLine(deviceId, r, width) + '\n');
  });
  c.on('error', fail);
  await c.subscribe({ reply: targets, report: targets });
  if (a.json) printJsonLine({ event: 'command', id: cmd.id, type: cmd.type, args: cmd.args, targets, expireSeconds: expire });
  else process.stdout.write(`sending ${cmd.type} ${cmd.id} to ${targets.length} device${targets.length === 1 ? '' : 's'}; waiting up to ${a.timeout} s\n`);
  await c.send(targets, cmd, expire);
  const timer = setTimeout(settle, a.timeout * 1000);
  try {
    await finished;
  } finally {
    clearTimeout(timer);
  }
  const succeeded: string[] = [];
  const failed: Array<{ deviceId: string; state: ReplyState; error?: Reply['error'] }> = [];
  const timedOut: Array<{ deviceId: string; lastState: ReplyState | null }> = [];
  for (const id of targets) {
    const r = last.get(id);
    if (r?.state === 'succeeded') succeeded.push(id);
    else if (r && TERMINAL.has(r.state)) failed.push({ deviceId: id, state: r.state, ...(r.error ? { error: r.error } : {}) });
    else timedOut.push({ deviceId: id, lastState: r?.state ?? null });
  }
  const ok = succeeded.length === targets.length;
  if (a.json) printJsonLine({ event: 'done', ok, id: cmd.id, succeeded, failed, timedOut });
  else {
    const parts = [`${succeeded.length} succeeded`];
    if (failed.length) parts.push(`${failed.length} did not: ${failed.map((f) => `${f.deviceId} ${f.state}${f.error ? ` (${f.error.code})` : ''}`).join(', ')}`);
    if (timedOut.length) parts.push(`${timedOut.length} timed out after ${a.timeout} s: ${timedOut.map((t) => `${t.deviceId} (${t.lastState ?? 'no reply'})`).join(', ')}`);
    process.stdout.write(parts.join('; ') + '\n');
  }
  if (!ok) process.exitCode = EXIT_FAILED;
}

// ---------------------------------------------------------------------------------------------
// watch

interface WatchArgs extends CommonArgs {
  persistent: boolean;
  sessionExpiry: number;
}

async function watchCmd(a: WatchArgs): Promise<void> {
  if (!Number.isInteger(a.sessionExpiry) || a.sessionExpiry < 0) throw new FleetError('E_ARGUMENT', '--session-expiry must be a whole number of seconds', true);
  await withStore(a, async (store) => {
    const c = await FleetController.connect({ ...commonOf(a), store, persistent: a.persistent, sessionExpiry: a.sessionExpiry });
    const time = () => formatTime(new Date().toISOString()).slice(11);
    const out = (line: string) => process.stdout.write(`${time()}  ${line}\n`);
    c.on('status', (id, s, applied) => (a.json ? printJsonLine({ event: 'status', deviceId: id, applied, status: s }) : out(statusLine(id, s, applied))));
    c.on('reply', (id, r, stored) => (a.json ? printJsonLine({ event: 'reply', stored, ...r }) : out(replyLine(id, r))));
    c.on('report', (id, r, stored) => (a.json ? printJsonLine({ event: 'report', deviceId: id, stored, report: r }) : out(reportLine(id, r) + (stored ? '' : '  (already stored)'))));
    c.on('invalid', (t, e) => (a.json ? printJsonLine({ event: 'invalid', topic: t, error: e }) : out(`invalid message on ${t}: ${e}`)));
    try {
      const stopped = new Promise<void>((resolve, reject) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
        c.once('error', reject);
      });
      await c.subscribe({ status: true, reply: 'fleet', report: 'fleet' });
      stderrLog({ level: 'info', event: 'watching', broker: a.broker, prefix: a.prefix, clientId: c.clientId, share: a.share ?? null, store: store.kind, persistent: a.persistent });
      await stopped;
    } finally {
      await c.close();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// reports

interface ReportsArgs extends CommonArgs {
  model?: string;
  device?: string;
  history: boolean;
}

async function reportsCmd(a: ReportsArgs): Promise<void> {
  await withStore(a, async (store) => {
    const reports = await store.reports({ model: a.model, deviceId: a.device, latest: !a.history });
    if (a.json) printJson(reports);
    else process.stdout.write(renderReports(reports, !a.history));
  });
}

// ---------------------------------------------------------------------------------------------

function run<T extends CommonArgs>(fn: (a: T) => Promise<void>) {
  return async (argv: unknown) => {
    const a = argv as T;
    try {
      await fn(a);
    } catch (e) {
      reportError(e, a.json);
    }
  };
}

export async function main(argv: string[]): Promise<void> {
  const wantsJson = argv.includes('--json');
  const cli: Argv = yargs(argv)
    .scriptName('edgeq fleet')
    .usage('edgeq fleet <command> [options]\n\nThe fleet controller: devices from their retained status, commands over MQTT, the replies and\nthe run reports in a store (SQLite, or PostgreSQL with --db postgres://… for several controllers).')
    .parserConfiguration({ 'parse-positional-numbers': false })
    .options(COMMON)
    .strict()
    .demandCommand(1, 'name a command (edgeq fleet --help lists them)')
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version(false)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      if (err) msg = err.message;
      if (wantsJson) printJson({ ok: false, error: { code: 'E_USAGE', message: msg } });
      else process.stderr.write(`edgeq fleet: error: ${msg}\n(edgeq fleet --help for usage)\n`);
      process.exit(EXIT_USAGE);
    })
    .command(
      'devices',
      'List the devices: online/offline, arch, profile, models, last report',
      (b) =>
        b
          .option('online', { type: 'boolean', default: false, describe: 'online devices only' })
          .option('where', { type: 'string', describe: 'key=value (id, online, arch, profile, cpu, os, hostname, agent, model); repeat: all must hold' })
          .option('refresh', { type: 'boolean', default: true, describe: 'read the retained statuses from the broker first (--no-refresh: the store only)' })
          .example('edgeq fleet devices --where arch=arm64', ''),
      run(devicesCmd),
    )
    .command(
      'send [words..]',
      'Send a command: send DEVICE[,DEVICE…] TYPE [ARGS…], send --all TYPE …, send --where key=value TYPE …',
      (b) =>
        b
          .positional('words', { type: 'string', array: true, describe: 'DEVICE TYPE ARGS…: ARGS is one JSON object or key=value pairs' })
          .option('all', { type: 'boolean', default: false, describe: 'every online device' })
          .option('where', { type: 'string', describe: 'devices matching key=value (online ones unless online=false|any); repeat: all must hold' })
          .option('wait', { type: 'boolean', default: false, describe: 'print the replies as they come until every device finished; exit 1 if any did not succeed' })
          .option('timeout', { type: 'number', default: 600, describe: 'with --wait: seconds to wait' })
          .option('expire', { type: 'number', describe: 'MQTT message expiry of the command, seconds (default --timeout; 0: never)' })
          .option('id', { type: 'string', describe: 'command id (default a new UUID; the same id again gets the stored answer)' })
          .example('edgeq fleet send cam-07 optimize model=fmnist method=auto --wait', '')
          .example('edgeq fleet send --where arch=arm64 capture \'{"model":"fmnist","action":"start"}\'', '')
          .example('edgeq fleet send --all status --wait --json', ''),
      run(sendCmd),
    )
    .command(
      'watch',
      'Print statuses, replies and reports as they arrive, storing them (the collector); Ctrl-C stops',
      (b) =>
        b
          .option('persistent', { type: 'boolean', default: true, describe: 'persistent session (fixed client id, clean start off): the broker keeps what arrives while watch is down' })
          .option('session-expiry', { type: 'number', default: 86_400, describe: 'seconds the broker keeps the persistent session after a disconnect' })
          .example('edgeq fleet watch --db postgres://fleet@db/fleet --share collectors --client-id collector-1', 'one of several collectors'),
      run(watchCmd),
    )
    .command(
      'reports',
      'The fleet table: fp32 vs int8 size, latency and accuracy per device (from the store)',
      (b) =>
        b
          .option('model', { type: 'string', describe: 'one model (its name, with or without @vN / .onnx)' })
          .option('device', { type: 'string', describe: 'one device' })
          .option('history', { type: 'boolean', default: false, describe: 'every report, not only the newest per device and model' }),
      run(reportsCmd),
    );
  await cli.parseAsync();
}

await main(hideBin(process.argv).slice(1));
