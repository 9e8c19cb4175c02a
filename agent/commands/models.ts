/** `edgeq models add|ls`: the models this device knows, and their versions. */
import type { Argv } from 'yargs';
import { registerModel } from '../models.js';
import { formatBytes, printJson, reportError } from '../output.js';
import { STORE_OPTIONS, withStore, type StoreArgs } from './common.js';
import { table } from './eval.js';

interface AddArgs extends StoreArgs {
  name: string;
  file: string;
}

export function modelsCommand(y: Argv): Argv {
  return y.command('models', 'Register models on this device and list them', (b) =>
    b
      .usage('edgeq models <add|ls> [options]')
      .command(
        'add',
        'Register an fp32 ONNX model under a name (version 1, or the next version)',
        (c) =>
          c
            .usage('edgeq models add --name NAME --file model.onnx\n\nCopies the file into the state directory under its sha256 and records it; the first version of a name becomes its active one.')
            .options(STORE_OPTIONS)
            .option('name', { type: 'string', demandOption: true, describe: 'model name: letters, digits, . _ -, up to 64' })
            .option('file', { type: 'string', demandOption: true, describe: 'the ONNX model file' }),
        async (argv) => {
          const args = argv as unknown as AddArgs;
          try {
            const v = await withStore(args, ({ store, stateDir }) => registerModel(store, stateDir, args.name, args.file));
            if (args.json) printJson(v);
            else process.stdout.write(`registered ${v.model} v${v.version} (${v.kind}, ${formatBytes(v.sizeBytes)}, sha256 ${v.sha256.slice(0, 12)}…), inputs ${v.inputs.map((i) => `${i.name} [${i.shape.join(', ')}] ${i.dtype}`).join('; ')}\n`);
          } catch (e) {
            reportError(e, args.json);
          }
        },
      )
      .command(
        'ls',
        'List models, their versions and captured samples',
        (c) => c.options(STORE_OPTIONS),
        async (argv) => {
          const args = argv as unknown as StoreArgs;
          try {
            const models = await withStore(args, ({ store }) => store.listModels().map((m) => ({ ...m, versionList: store.listVersions(m.name) })));
            if (args.json) return printJson(models);
            if (models.length === 0) return void process.stdout.write('no models yet (edgeq models add --name NAME --file model.onnx)\n');
            const rows = [['model', 'version', 'kind', 'size', 'active', 'samples']];
            for (const m of models) {
              for (const v of m.versionList) rows.push([m.name, `v${v.version}`, v.kind, formatBytes(v.sizeBytes), m.active === v.version ? 'yes' : '', String(m.samples)]);
            }
            process.stdout.write(table(rows));
          } catch (e) {
            reportError(e, args.json);
          }
        },
      )
      .demandCommand(1, 'name a subcommand: add or ls'),
  );
}
