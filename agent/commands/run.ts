/** `edgeq run`: the device daemon — store, local endpoint and fleet link — until SIGTERM. */
import type { Argv } from 'yargs';
import { countArg } from '../args.js';
import { Daemon } from '../daemon/daemon.js';
import { resolveDaemonConfig, type RunFlags } from '../daemon/config.js';
import { jsonLog } from '../endpoint.js';
import { printJson } from '../output.js';
import { isEdgeqError } from '../../quant/errors.js';

interface RunArgs {
  config?: string;
  broker?: string;
  'device-id'?: string;
  'state-dir'?: string;
  prefix?: string;
  username?: string;
  password?: string;
  'tls-ca'?: string;
  'tls-cert'?: string;
  'tls-key'?: string;
  threads?: string;
  socket?: string;
  port?: string;
  endpoint: boolean;
  json: boolean;
}

/** sysexits EX_CONFIG: systemd's RestartPreventExitStatus=78 keeps a bad config from restarting in a loop. */
export const EXIT_CONFIG = 78;
/** A second SIGTERM/SIGINT, or a stop that overran its bound by this much, ends the process at once. */
const HARD_STOP_GRACE_MS = 5000;

export function runCommand(y: Argv): Argv {
  return y.command(
    'run',
    'Run the device daemon: the local endpoint, the job queue and the link to the fleet broker (MQTT 5)',
    (b) =>
      b
        .usage(
          'edgeq run [--config FILE] [--broker URL] [--device-id ID] [--state-dir DIR] [options]\n\n' +
            'Settings come from the config file (default /etc/edgeq/config.json when it exists), then the\n' +
            'environment (EDGEQ_CONFIG, EDGEQ_DEVICE_ID, EDGEQ_BROKER, EDGEQ_USERNAME, EDGEQ_PASSWORD,\n' +
            'EDGEQ_TLS_CA, EDGEQ_TLS_CERT, EDGEQ_TLS_KEY, EDGEQ_PREFIX, EDGEQ_STATE_DIR, EDGEQ_THREADS),\n' +
            'then these flags. Logs are JSON lines on stderr; nothing is printed on stdout.\n' +
            'SIGTERM or SIGINT stops gracefully (exit 0); a second one stops at once.',
        )
        .option('config', { type: 'string', describe: 'config file (JSON); default /etc/edgeq/config.json if it exists' })
        .option('broker', { type: 'string', describe: 'broker URL: mqtt://, mqtts://, ws:// or wss://' })
        .option('device-id', { type: 'string', describe: 'this device\'s id in topic names (default: derived from /etc/machine-id, else the host name)' })
        .option('state-dir', { type: 'string', describe: 'state directory (store, models, endpoint socket)' })
        .option('prefix', { type: 'string', describe: 'topic prefix (default edgeq/v1)' })
        .option('username', { type: 'string', describe: 'broker user name' })
        .option('password', { type: 'string', describe: 'broker password (visible in ps: prefer EDGEQ_PASSWORD or the config file)' })
        .option('tls-ca', { type: 'string', describe: 'CA bundle (PEM) to trust for mqtts:// and wss://' })
        .option('tls-cert', { type: 'string', describe: 'client certificate (PEM) for mutual TLS' })
        .option('tls-key', { type: 'string', describe: 'client key (PEM) for mutual TLS' })
        .option('threads', { type: 'string', describe: 'ONNX Runtime threads for jobs and the endpoint' })
        .option('socket', { type: 'string', describe: 'endpoint Unix socket (default: edgeq.sock in the state directory)' })
        .option('port', { type: 'string', describe: 'endpoint: also listen on this loopback TCP port' })
        .option('endpoint', { type: 'boolean', default: true, describe: 'run the local inference endpoint (--no-endpoint: fleet link only)' })
        .option('json', { type: 'boolean', default: false, describe: 'a start-up error as one JSON object on stdout (logs stay JSON lines on stderr)' })
        .example('EDGEQ_BROKER=mqtts://broker.example:8883 EDGEQ_TLS_CA=/etc/edgeq/ca.pem edgeq run', 'the daemon, as systemd runs it'),
    async (argv) => {
      await runDaemon(argv as unknown as RunArgs);
    },
  );
}

async function runDaemon(a: RunArgs): Promise<void> {
  let daemon: Daemon;
  let shutdownTimeoutMs: number;
  try {
    const flags: RunFlags = {
      config: a.config,
      broker: a.broker,
      deviceId: a['device-id'],
      stateDir: a['state-dir'],
      prefix: a.prefix,
      username: a.username,
      password: a.password,
      tlsCa: a['tls-ca'],
      tlsCert: a['tls-cert'],
      tlsKey: a['tls-key'],
      threads: countArg('--threads', a.threads),
      socket: a.socket,
      port: countArg('--port', a.port, 0),
      endpoint: a.endpoint,
    };
    const cfg = resolveDaemonConfig(flags);
    shutdownTimeoutMs = cfg.shutdownTimeoutMs;
    // Everything the daemon creates (store, models, jobs' temporary files) is its user's alone;
    // the endpoint's socket is opened to the group explicitly.
    process.umask(0o077);
    daemon = new Daemon(cfg);
  } catch (e) {
    fail(e, 'config', a.json);
    return;
  }
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    if (++signals > 1) {
      jsonLog({ level: 'warn', component: 'daemon', event: 'exit-now', signal, why: 'second signal' });
      process.exit(1);
    }
    const hard = setTimeout(() => {
      jsonLog({ level: 'error', component: 'daemon', event: 'exit-now', why: 'the graceful stop overran its bound' });
      process.exit(0);
    }, shutdownTimeoutMs + HARD_STOP_GRACE_MS);
    hard.unref();
    daemon.stop(signal).then(
      () => process.exit(0),
      (e: unknown) => {
        jsonLog({ level: 'error', component: 'daemon', event: 'stop-failed', message: (e as Error).message });
        process.exit(0);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // A bug must not leave a half-working daemon: log it as JSON and exit; systemd restarts it,
  // and the next start reports an interrupted job and sends what the outbox holds.
  const fatal = (e: unknown) => {
    jsonLog({ level: 'fatal', component: 'daemon', event: 'crash', message: e instanceof Error ? e.message : String(e), stack: e instanceof Error ? e.stack : undefined });
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
  try {
    await daemon.start();
  } catch (e) {
    process.removeListener('SIGTERM', onSignal);
    process.removeListener('SIGINT', onSignal);
    fail(e, 'start', a.json);
  }
  // The daemon now lives on its sockets and timers until a signal.
}

function fail(e: unknown, phase: string, json: boolean): void {
  const code = isEdgeqError(e) ? e.code : 'E_INTERNAL';
  const message = e instanceof Error ? e.message : String(e);
  jsonLog({ level: 'error', component: 'daemon', event: 'start-failed', phase, code, message, ...(code === 'E_INTERNAL' && e instanceof Error ? { stack: e.stack } : {}) });
  if (json) printJson({ ok: false, error: { code, message } });
  else process.stderr.write(`edgeq: error: ${message}\n`);
  process.exitCode = code === 'E_CONFIG_INVALID' ? EXIT_CONFIG : 1;
}
