import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DTYPE_SIZE, elementCount, sampleHash, splitOf, Store, type TensorDtype } from '../../agent/store/index.js';
import { tempDir } from '../helpers/fixtures.js';

const STORE_MODULE = new URL('../../agent/store/index.js', import.meta.url).href;
// A burst is 600 samples of 16 KiB: 9.6 MB, more than SQLite's default page cache (about 8 MB),
// so a burst's transaction spills pages into the WAL before it commits, and a kill can leave
// uncommitted frames behind for recovery to discard.
const BATCH = 600;
const MAX_SAMPLES = 1500;
const MAX_BYTES = 1200 * 16_400;

// The child: opens the store, creates and starts a run, then writes capture bursts (one
// offerSamples transaction of BATCH samples each) forever, printing "begin k" before and
// "commit k" after each. Pipes are synchronous on Linux, so a "commit k" line the parent has
// read is a transaction that committed.
const CHILD = `
import { randomFillSync } from 'node:crypto';
const [storeModule, dbPath, round] = process.argv.slice(2);
const { Store } = await import(storeModule);
const store = Store.open(dbPath);
if (!store.hasModel('cam')) {
  store.addModelVersion('cam', { kind: 'fp32', path: '/models/cam.onnx', sha256: 'c'.repeat(64), sizeBytes: 1,
    inputs: [{ name: 'image', dtype: 'float32', shape: ['N', 64, 64] }, { name: 'meta', dtype: 'int32', shape: ['N', 4] }] });
  store.setActive('cam', 1);
  store.setPolicy('cam', { rate: 1, maxSamples: ${MAX_SAMPLES}, maxBytes: ${MAX_BYTES} });
}
const run = store.createRun('calibrate', { model: 'cam', round: Number(round) });
store.startRun(run.id);
const say = (line) => process.stdout.write(line + '\\n');
say('ready ' + run.id);
for (let k = 0; ; k++) {
  const batch = [];
  for (let i = 0; i < ${BATCH}; i++) {
    const image = randomFillSync(new Uint8Array(64 * 64 * 4));
    const meta = new Uint8Array(new Int32Array([Number(round), k, i, 7]).buffer);
    batch.push({ tensors: [{ name: 'image', dtype: 'float32', shape: [1, 64, 64], data: image }, { name: 'meta', dtype: 'int32', shape: [1, 4], data: meta }], source: 'burst' });
  }
  say('begin ' + k);
  store.offerSamples('cam', batch);
  say('commit ' + k);
  store.setProgress(run.id, (k % 100) / 100);
}
`;

interface Killed {
  runId: string;
  commits: number;
  begins: number;
  lastLine: string;
}

/**
 * Runs the child until it has committed `bursts` bursts, then SIGKILLs it as soon as it says it
 * begins the next one: the kill most likely lands inside that burst's transaction (where it
 * lands is logged, never asserted).
 */
function killMidBurst(script: string, db: string, round: number, bursts: number): Promise<Killed> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [script, STORE_MODULE, db, String(round)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let runId = '';
    let commits = 0;
    let begins = 0;
    let lastLine = '';
    let killing = false;
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const line of lines) {
        lastLine = line;
        if (line.startsWith('ready ')) runId = line.slice(6);
        if (line.startsWith('begin ')) begins++;
        if (line.startsWith('commit ')) commits++;
        if (!killing && commits >= bursts && line.startsWith('begin ')) {
          killing = true;
          child.kill('SIGKILL');
        }
      }
    });
    child.on('error', reject);
    // 'close', not 'exit': every line the child wrote has been read by then.
    child.on('close', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`the child exited by itself (code ${code}, signal ${signal}): ${err}`));
      else resolvePromise({ runId, commits, begins, lastLine });
    });
  });
}

test('SIGKILL in the middle of a capture burst and of a run: the store is intact, no half sample is visible, the run reads interrupted, a new run proceeds', async (t) => {
  const dir = tempDir(t, 'edgeq-crash-');
  const db = join(dir, 'state', 'edgeq.db');
  const script = join(dir, 'child.mjs');
  writeFileSync(script, CHILD);
  let seenBefore = 0;
  const runs: string[] = [];
  for (let round = 0; round < 3; round++) {
    const killed = await killMidBurst(script, db, round, 2 + round);
    const wal = existsSync(`${db}-wal`) ? statSync(`${db}-wal`).size : 0;
    t.log(`round ${round}: ${killed.commits} bursts committed, ${killed.begins} begun, last line "${killed.lastLine}", WAL ${(wal / 2 ** 20).toFixed(1)} MiB`);
    t.truthy(killed.runId);
    runs.push(killed.runId);

    const store = Store.open(db);
    try {
      t.deepEqual(store.integrityCheck(), ['ok']);

      // Every committed burst is there, and no burst is there in part.
      const stats = store.captureStats('cam');
      const seen = stats.seen - seenBefore;
      t.is(seen % BATCH, 0, `${seen} samples seen: a burst was stored in part`);
      t.true(seen >= killed.commits * BATCH && seen <= killed.begins * BATCH, `${seen} samples seen, ${killed.commits} bursts committed, ${killed.begins} begun`);
      t.log(`round ${round}: ${seen / BATCH} bursts stored${seen / BATCH < killed.begins ? ', the interrupted one rolled back' : ', the last one committed before the kill'}`);
      t.is(stats.seen, stats.kept + stats.evicted + stats.reservoirFull + stats.duplicates + stats.sampledOut);
      seenBefore = stats.seen;

      // Every visible sample is whole: all its tensors, each with its full data, matching its hash.
      let n = 0;
      let bytes = 0;
      for (const s of store.iterateSamples('cam')) {
        n++;
        t.deepEqual(s.tensors.map((x) => x.name), ['image', 'meta']);
        for (const x of s.tensors) {
          t.is(x.data.byteLength, elementCount(x.shape) * DTYPE_SIZE[x.dtype as TensorDtype]);
          bytes += x.data.byteLength;
        }
        t.deepEqual(s.tensors.map((x) => x.shape), [[1, 64, 64], [1, 4]]);
        t.is(sampleHash(s.tensors), s.sha256);
        t.is(splitOf(s.sha256), s.split);
      }
      t.is(n, stats.kept);
      t.is(bytes, stats.bytes);
      t.true(n <= MAX_SAMPLES && bytes <= MAX_BYTES);

      // The killed process's run is interrupted (earlier rounds' stay so), and a new run proceeds.
      for (const id of runs) {
        const r = store.getRun(id)!;
        t.is(r.state, 'interrupted');
        t.is(r.error?.code, 'E_INTERRUPTED');
        t.is(r.kind, 'calibrate');
      }
      const next = store.createRun('calibrate', { model: 'cam', after: killed.runId });
      store.startRun(next.id);
      store.setProgress(next.id, 0.5);
      store.finishRun(next.id, { samples: n });
      t.like(store.getRun(next.id), { state: 'succeeded', result: { samples: n }, error: null });
    } finally {
      store.close();
    }
  }
});
