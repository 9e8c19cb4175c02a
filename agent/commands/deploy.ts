/** `edgeq deploy --manifest FILE`: fetch, verify, warm up and activate a model artifact. */
import type { Argv } from 'yargs';
import { dirname, resolve } from 'node:path';
import { parseManifest } from '../../deploy/manifest.js';
import { deployManifest, type DeployResult } from '../deploy.js';
import { readJsonFile } from '../json-file.js';
import { formatBytes, printJson, progressLine, reportError } from '../output.js';
import { STORE_OPTIONS, withStore, type StoreArgs } from './common.js';

interface DeployArgs extends StoreArgs {
  manifest: string;
}

export function describeDeploy(r: DeployResult): string {
  const lines: string[] = [];
  const sig = r.signature === 'verified' ? 'signature verified' : r.signature === 'unsigned' ? 'unsigned' : 'signature not checked (no deploy.publicKeys)';
  switch (r.outcome) {
    case 'already-active':
      lines.push(`${r.model} ${r.release} is already active (v${r.version}); nothing to do`);
      break;
    case 'activated-existing':
      lines.push(`${r.model} ${r.release} was deployed before: activated v${r.version} again (was v${r.previous ?? '-'})${r.pending ? '; pending until it has served' : ''}`);
      break;
    default: {
      const got = r.outcome === 'cached'
        ? 'file already on the device'
        : `downloaded ${formatBytes(r.transferred)}${r.resumedFrom ? `, resumed after ${formatBytes(r.resumedFrom)}` : ''}${r.rangeIgnored ? ' (the server ignored the range request: started over)' : ''}`;
      lines.push(`${r.model} ${r.release}: ${got}; size and sha256 verified, ${sig}; warm-up passed`);
      lines.push(`activated ${r.model} v${r.version}${r.previous !== null ? ` (was v${r.previous})` : ''}${r.pending ? '; pending until it has served (deploy.confirmAfter)' : ''}`);
    }
  }
  if (r.pruned.length) lines.push(`pruned ${r.pruned.map((p) => `v${p.version}`).join(', ')}`);
  return lines.join('\n') + '\n';
}

export function deployCommand(y: Argv): Argv {
  return y.command(
    'deploy',
    'Fetch a model from a manifest, verify it, warm it up and make it the active version',
    (b) =>
      b
        .usage('edgeq deploy --manifest FILE\n\nThe manifest is JSON {name, version, url, sha256, size, kind?, signature?}; the signature covers every other field. The file is fetched over http(s) (an interrupted\ndownload resumes) or copied from a directory the config\'s deploy.allow lists, checked against size and sha256\n(and the Ed25519 signature when deploy.publicKeys are set), loaded and run once in ONNX Runtime, then made active\nin one transaction; older versions beyond deploy.keepVersions are removed. A release whose inputs differ from the active\nversion is refused. The new version is pending until the endpoint has served it deploy.confirmAfter times without error.')
        .options(STORE_OPTIONS)
        .option('manifest', { type: 'string', demandOption: true, describe: 'the deploy manifest (JSON)' }),
    async (argv) => {
      const args = argv as unknown as DeployArgs;
      try {
        const path = resolve(args.manifest);
        const manifest = parseManifest(readJsonFile(path, 'E_MANIFEST_INVALID'), path);
        const progress = progressLine(!args.json);
        const r = await withStore(args, ({ store, stateDir, config }) =>
          deployManifest(store, stateDir, manifest, { config: config?.deploy, baseDir: dirname(path), onProgress: (n, total) => progress.update('downloading', n, total) }).finally(() => progress.done()));
        if (args.json) printJson({ ok: true, ...r });
        else process.stdout.write(describeDeploy(r));
      } catch (e) {
        reportError(e, args.json);
      }
    },
  );
}
