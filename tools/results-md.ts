/**
 * bench/RESULTS.md holds the output of more than one benchmark script (`npm run bench`,
 * `npm run bench:methods`). Each script owns one marked section and rewrites only that, so
 * running one does not throw away the other's figures.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';

const TITLE = '# Benchmark results\n\nEach section below says which command produced it; rerun that command to refresh it.\n';

export function writeSection(path: string, id: string, body: string): void {
  const start = `<!-- section:${id} -->`;
  const end = `<!-- /section:${id} -->`;
  const block = `${start}\n${body.trim()}\n${end}`;
  const old = existsSync(path) ? readFileSync(path, 'utf8') : TITLE;
  const i = old.indexOf(start);
  const j = old.indexOf(end);
  const next = i >= 0 && j > i ? old.slice(0, i) + block + old.slice(j + end.length) : `${old.trimEnd()}\n\n${block}\n`;
  writeFileSync(`${path}.tmp`, next);
  renameSync(`${path}.tmp`, path);
}
