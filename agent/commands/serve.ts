/** `edgeq serve`: the local inference endpoint, serving the store's active versions and capturing inputs. */
import type { Argv } from 'yargs';
import { countArg } from '../args.js';
import { probationPolicy } from '../config.js';
import { jsonLog, startEndpoint } from '../endpoint.js';
import { reportError } from '../output.js';
import { socketFile } from '../state.js';
import { STORE_OPTIONS, openStateStore, type StoreArgs } from './common.js';

interface ServeArgs extends StoreArgs {
  socket?: string;
  port?: string;
  host?: string;
  capture: boolean;
  threads?: string;
}

export function serveCommand(y: Argv): Argv {
  return y.command(
    'serve',
    'Serve the registered models over HTTP on a Unix socket (and optionally a loopback port), capturing inputs',
    (b) =>
      b
        .usage(
          'edgeq serve [--socket PATH] [--port N] [options]\n\n' +
            'POST /v1/models/NAME/infer with {"inputs": {"INPUT": {"shape": [...], "data": [...]}}} or an .npy\n' +
            'body answers with the active version\'s outputs; GET /v1/health, /v1/models, /metrics\n' +
            '(Prometheus). Inputs are captured per each model\'s policy (edgeq capture policy).\n' +
            'Runs until SIGINT or SIGTERM; logs are JSON lines on stderr.',
        )
        .options(STORE_OPTIONS)
        .option('socket', { type: 'string', describe: 'Unix socket path (default: edgeq.sock in the state directory), mode 0660' })
        .option('port', { type: 'string', describe: 'also listen on this TCP port (0: any free port)' })
        .option('host', { type: 'string', describe: 'TCP address (default 127.0.0.1; others need serve.allowNonLoopback in the config)' })
        .option('capture', { type: 'boolean', default: true, describe: 'capture inputs (--no-capture: serve only)' })
        .option('threads', { type: 'string', describe: 'ONNX Runtime threads per session' })
        .example('curl --unix-socket ~/.local/state/edgeq/edgeq.sock localhost/v1/models', 'what is served'),
    async (argv) => {
      await runServe(argv as unknown as ServeArgs);
    },
  );
}

async function runServe(args: ServeArgs): Promise<void> {
  try {
    process.umask(0o077); // as `edgeq run`: the store and captured inputs are the user's alone
    const { store, stateDir, config } = openStateStore(args);
    const serve = config?.serve ?? {};
    const port = countArg('--port', args.port, 0) ?? serve.port;
    const endpoint = await startEndpoint(store, {
      ...serve,
      socket: args.socket ?? serve.socket ?? socketFile(stateDir),
      port,
      host: args.host ?? serve.host,
      capture: args.capture,
      threads: countArg('--threads', args.threads),
      probation: probationPolicy(config?.deploy),
      captureQueue: { maxQueue: config?.capture?.maxQueue, maxQueueBytes: config?.capture?.maxQueueBytes },
    }).catch((e: unknown) => {
      store.close();
      throw e;
    });
    const { socket, port: bound } = endpoint.server;
    jsonLog({ level: 'info', event: 'serving', socket, port: bound, stateDir, models: store.listModels().map((m) => m.name), capture: args.capture });
    if (!args.json) process.stdout.write(`serving on ${[socket && `unix:${socket}`, bound !== undefined && `http://127.0.0.1:${bound}`].filter(Boolean).join(' and ')}\n`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string) => {
        jsonLog({ level: 'info', event: 'stopping', signal });
        resolve();
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
    await endpoint.close();
    store.close();
  } catch (e) {
    reportError(e, args.json);
  }
}
