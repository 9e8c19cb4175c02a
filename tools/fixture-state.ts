/**
 * A device state directory to start from: the fixture CNN registered as "fmnist" with labelled
 * test images imported as captured samples. The daemon tests, the soak run and bench:memory use it.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { importNpy } from '../agent/capture/import.js';
import { registerModel } from '../agent/models.js';
import { storeFile } from '../agent/state.js';
import { Store } from '../agent/store/index.js';
import { readNpy, writeNpy } from '../quant/npy.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export const FMNIST_FIXTURE = {
  model: join(ROOT, 'test/fixtures/fmnist/model.onnx'),
  test: join(ROOT, 'test/fixtures/fmnist/test.npy'),
  labels: join(ROOT, 'test/fixtures/fmnist/test_labels.npy'),
};

/** Registers the fixture in `stateDir`'s store with its first `samples` test images and labels (.npy copies written to `workDir`). */
export async function prepareFixtureState(stateDir: string, workDir: string, samples: number, source: string): Promise<void> {
  const x = readNpy(FMNIST_FIXTURE.test);
  const y = readNpy(FMNIST_FIXTURE.labels);
  writeNpy(join(workDir, 'x.npy'), (x.data as Float32Array).slice(0, samples * 784), [samples, 1, 28, 28]);
  writeNpy(join(workDir, 'y.npy'), (y.data as BigInt64Array).slice(0, samples), [samples]);
  const store = Store.open(storeFile(stateDir));
  try {
    await registerModel(store, stateDir, 'fmnist', FMNIST_FIXTURE.model);
    importNpy(store, 'fmnist', new Map([['', join(workDir, 'x.npy')]]), { labels: join(workDir, 'y.npy'), source });
  } finally {
    store.close();
  }
}
