/** The `edgeq` command line. Each command lives in agent/commands/. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { quantizeCommand } from './commands/quantize.js';
import { detectCommand } from './commands/detect.js';
import { benchCommand } from './commands/bench.js';
import { evalCommand } from './commands/eval.js';
import { optimizeCommand } from './commands/optimize.js';
import { reportCommand } from './commands/report.js';
import { modelsCommand } from './commands/models.js';
import { captureCommand } from './commands/capture.js';
import { serveCommand } from './commands/serve.js';
import { runCommand } from './commands/run.js';
import { deployCommand } from './commands/deploy.js';
import { EXIT_USAGE, printJson } from './output.js';

export async function main(argv: string[]): Promise<void> {
  const wantsJson = argv.includes('--json');
  let cli = yargs(argv)
    .scriptName('edgeq')
    .usage('edgeq <command> [options]\n\nMakes ONNX models smaller and faster on the device that runs them: int8 post-training\nquantization calibrated on the inputs the device really sees.')
    .strict()
    .demandCommand(1, 'name a command (edgeq --help lists them)')
    .recommendCommands()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // Commands report their own errors, so what reaches here is about the command line: yargs'
      // parse errors (a flag missing its value) and failed .check()s — usage errors, exit 2.
      if (err) msg = err.message;
      if (wantsJson) printJson({ ok: false, error: { code: 'E_USAGE', message: msg } });
      else process.stderr.write(`edgeq: error: ${msg}\n(edgeq --help for usage)\n`);
      process.exit(EXIT_USAGE);
    });
  cli = quantizeCommand(cli);
  cli = detectCommand(cli);
  cli = evalCommand(cli);
  cli = benchCommand(cli);
  cli = optimizeCommand(cli);
  cli = reportCommand(cli);
  cli = modelsCommand(cli);
  cli = captureCommand(cli);
  cli = serveCommand(cli);
  cli = runCommand(cli);
  cli = deployCommand(cli);
  // bin/edgeq.js hands `edgeq fleet …` to fleet/cli.ts before this parser runs; listed here so
  // `edgeq --help` shows it.
  cli = cli.command('fleet', 'The fleet controller: devices, send, watch, reports over MQTT (edgeq fleet --help)', () => {}, () => {});
  await cli.parseAsync();
}

await main(hideBin(process.argv));
