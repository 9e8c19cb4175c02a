/**
 * The glibc malloc settings live in agent/daemon/malloc-env.ts; the systemd unit and the arm64
 * image must start the daemon with exactly those (the soak run measures the daemon with them).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MALLOC_ENV, mallocTuned } from '../../agent/daemon/malloc-env.js';
import { ROOT } from '../helpers/fixtures.js';

/** KEY=VALUE words of a systemd `Environment=` line or a Dockerfile `ENV` instruction. */
function assignments(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const word of text.split(/\s+/)) {
    const m = /^"?([A-Za-z_][A-Za-z0-9_]*)=(.*?)"?$/.exec(word);
    if (m) out.set(m[1], m[2]);
  }
  return out;
}

test('systemd/edgeq.service sets every MALLOC_ENV variable to its value', (t) => {
  const unit = readFileSync(join(ROOT, 'systemd/edgeq.service'), 'utf8');
  const lines = unit.split('\n').filter((l) => l.startsWith('Environment='));
  const env = assignments(lines.map((l) => l.slice('Environment='.length)).join(' '));
  for (const [k, v] of Object.entries(MALLOC_ENV)) t.is(env.get(k), v, k);
  t.true(mallocTuned(Object.fromEntries(env)));
});

test('Dockerfile.arm64 sets every MALLOC_ENV variable in the runtime stage', (t) => {
  const docker = readFileSync(join(ROOT, 'Dockerfile.arm64'), 'utf8').replace(/\\\n/g, ' ');
  const runtime = docker.slice(docker.lastIndexOf('\nFROM '));
  const env = assignments(runtime.split('\n').filter((l) => l.startsWith('ENV ')).map((l) => l.slice(4)).join(' '));
  for (const [k, v] of Object.entries(MALLOC_ENV)) t.is(env.get(k), v, k);
});

test('mallocTuned needs every setting with its exact value', (t) => {
  t.true(mallocTuned({ ...MALLOC_ENV }));
  t.false(mallocTuned({}));
  const [first] = Object.keys(MALLOC_ENV);
  t.false(mallocTuned({ ...MALLOC_ENV, [first]: `${MALLOC_ENV[first]}0` }));
  t.false(mallocTuned({ ...MALLOC_ENV, [first]: undefined }));
});
