/** `edgeq models add|ls`: the models this device knows, and their versions. */
import type { Argv } from 'yargs';
import { activateVersion, resolveVersionRef, rollbackModel } from '../deploy.js';
import { registerModel } from '../models.js';
import type { ModelVersion, PendingActivation } from '../store/index.js';
import { formatBytes, printJson, reportError } from '../output.js';
import { STORE_OPTIONS, withStore, type StoreArgs } from './common.js';
import { table } from './eval.js';

interface RefArgs extends StoreArgs {
  ref: string;
}

interface NameArgs extends StoreArgs {
  name: string;
}

interface AddArgs extends StoreArgs {
  name: string;
  file: string;
}

/** 'yes', 'pending (12 served)' while on probation, 'rolled back' for a version that failed it. */
function activeCell(active: number | null, pending: PendingActivation | null, v: ModelVersion): string {
  if (active === v.version) return pending?.version === v.version ? `pending (${pending.servedOk} served, ${pending.failures} failed)` : 'yes';
  return v.state === 'failed' ? 'rolled back' : '';
}

export function modelsCommand(y: Argv): Argv {
  return y.command('models', 'Register models on this device and list them', (b) =>
    b
      .usage('edgeq models <add|ls|activate|rollback> [options]')
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
            const models = await withStore(args, ({ store }) => store.listModels().map((m) => ({ ...m, versionList: store.listVersions(m.name), pending: store.pendingActivation(m.name) ?? null })));
            if (args.json) return printJson(models);
            if (models.length === 0) return void process.stdout.write('no models yet (edgeq models add --name NAME --file model.onnx)\n');
            const rows = [['model', 'version', 'release', 'kind', 'size', 'active', 'samples']];
            for (const m of models) {
              for (const v of m.versionList) rows.push([m.name, `v${v.version}`, v.release ?? '', v.kind, formatBytes(v.sizeBytes), activeCell(m.active, m.pending, v), String(m.samples)]);
            }
            process.stdout.write(table(rows));
          } catch (e) {
            reportError(e, args.json);
          }
        },
      )
      .command(
        'activate <ref>',
        'Make NAME@VERSION the active version (after checking its file and a warm-up inference); it is pending until it has served',
        (c) =>
          c
            .usage('edgeq models activate NAME@VERSION\n\nVERSION is a release string from a deploy manifest (e.g. fmnist@1.4.0) or vN for store version N (fmnist@v3).\nThe file must be intact and run one inference in ONNX Runtime; otherwise the active version stays.\nThe new version is then pending: the endpoint confirms it after deploy.confirmAfter inferences in a row without error,\nand rolls it back after deploy.maxFailures failures or deploy.maxPendingStarts restarts while pending.')
            .options(STORE_OPTIONS)
            .positional('ref', { type: 'string', demandOption: true, describe: 'NAME@VERSION' }),
        async (argv) => {
          const args = argv as unknown as RefArgs;
          try {
            const r = await withStore(args, async ({ store }) => {
              const v = resolveVersionRef(store, args.ref);
              return activateVersion(store, v.model, v.version);
            });
            const out = { ok: true, model: r.version.model, version: r.version.version, release: r.version.release ?? null, previous: r.previous?.version ?? null, pending: r.pending };
            if (args.json) printJson(out);
            else process.stdout.write(`activated ${out.model} v${out.version}${out.release ? ` (${out.release})` : ''}${out.previous !== null ? `, was v${out.previous}` : ''}${out.pending ? '; pending until it has served' : ''}\n`);
          } catch (e) {
            reportError(e, args.json);
          }
        },
      )
      .command(
        'rollback <name>',
        'Activate the version before the active one',
        (c) =>
          c
            .usage('edgeq models rollback NAME\n\nActivates the newest version older than the active one whose file is intact (after a warm-up inference); E_NO_PREVIOUS if there is none.')
            .options(STORE_OPTIONS)
            .positional('name', { type: 'string', demandOption: true, describe: 'model name' }),
        async (argv) => {
          const args = argv as unknown as NameArgs;
          try {
            const r = await withStore(args, ({ store }) => rollbackModel(store, args.name));
            const out = { ok: true, model: r.version.model, version: r.version.version, release: r.version.release ?? null, previous: r.previous?.version ?? null };
            if (args.json) printJson(out);
            else process.stdout.write(`rolled ${out.model} back to v${out.version}${out.release ? ` (${out.release})` : ''}${out.previous !== null ? ` from v${out.previous}` : ''}\n`);
          } catch (e) {
            reportError(e, args.json);
          }
        },
      )
      .demandCommand(1, 'name a subcommand: add, ls, activate or rollback'),
  );
}
