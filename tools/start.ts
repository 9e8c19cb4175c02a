/**
 * `npm start`: the whole job of the agent on the bundled Fashion-MNIST fixture, in one command,
 * with the `edgeq` commands it runs printed so they can be run by hand:
 * register the model, import labelled samples as if the device had captured them, then
 * optimize — calibrate on the calibration split, evaluate on the held-out split, bench both,
 * record the run and print its report. The state lives in $EDGEQ_STATE_DIR, or a directory
 * under the system's temp dir that is reused (and re-seeded only when empty).
 */
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';

const ROOT = resolve(new URL('../..', import.meta.url).pathname);
const CLI = join(ROOT, 'bin/edgeq.js');
const stateDir = process.env.EDGEQ_STATE_DIR || join(tmpdir(), 'edgeq-start');
const fixture = (f: string) => relative(process.cwd(), join(ROOT, 'test/fixtures/fmnist', f)) || f;

function edgeq(args: string[], quiet = false): { status: number | null; stdout: string } {
  if (!quiet) process.stdout.write(`\n$ edgeq ${args.join(' ')}\n`);
  const r = spawnSync(process.execPath, [CLI, ...args, '--state-dir', stateDir], { stdio: quiet ? 'pipe' : ['ignore', 'inherit', 'inherit'], encoding: 'utf8' });
  if (r.status !== 0 && !quiet) process.exit(r.status ?? 1);
  return { status: r.status, stdout: r.stdout ?? '' };
}

process.stdout.write(`edgeq on the bundled fixture (state directory ${stateDir})\n`);
const listed = JSON.parse(edgeq(['models', 'ls', '--json'], true).stdout || '[]') as Array<{ name: string; samples: number }>;
const known = listed.find((m) => m.name === 'fmnist');
if (!known) edgeq(['models', 'add', '--name', 'fmnist', '--file', fixture('model.onnx')]);
if (!known?.samples) edgeq(['capture', 'import', '--model', 'fmnist', '--file', fixture('test.npy'), '--labels', fixture('test_labels.npy')]);
edgeq(['optimize', '--model-name', 'fmnist']);
process.stdout.write('\nNext: edgeq serve (the local endpoint), edgeq capture stats, edgeq eval --from-store --model-name fmnist --compare FILE.\n');
