/** Paths of committed fixtures and per-test temporary directories. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ExecutionContext } from 'ava';

// ava runs with the project root as working directory.
export const ROOT = resolve('.');
export const FMNIST = {
  model: join(ROOT, 'test/fixtures/fmnist/model.onnx'),
  calib: join(ROOT, 'test/fixtures/fmnist/calib.npy'),
  test: join(ROOT, 'test/fixtures/fmnist/test.npy'),
  labels: join(ROOT, 'test/fixtures/fmnist/test_labels.npy'),
};
export const CLI = join(ROOT, 'bin/edgeq.js');

/** A fresh directory removed when the test ends. */
export function tempDir(t: ExecutionContext, prefix = 'edgeq-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
