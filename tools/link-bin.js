// Makes `npx edgeq` work inside the checkout: npm links the bins of dependencies into
// node_modules/.bin, never the project's own, and npx looks there first. Run by `prepare`.
import { mkdirSync, symlinkSync, lstatSync, unlinkSync } from 'node:fs';
import { join, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const binDir = join(root, 'node_modules', '.bin');
const link = join(binDir, 'edgeq');
mkdirSync(binDir, { recursive: true });
try {
  lstatSync(link);
  unlinkSync(link);
} catch {
  // no link yet
}
symlinkSync(relative(binDir, join(root, 'bin', 'edgeq.js')), link);
