import test, { type ExecutionContext } from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { activateVersion, deployManifest, pruneModel, resolveVersionRef, rollbackModel } from '../../agent/deploy.js';
import type { DeployConfig } from '../../agent/config.js';
import { modelsDir, storeFile } from '../../agent/state.js';
import { Store } from '../../agent/store/index.js';
import { signManifest } from '../../deploy/signature.js';
import { sha256File } from '../../quant/hash.js';
import { tempDir } from '../helpers/fixtures.js';
import { fileOf, manifestFor, modelVariant, onnxFiles, sha256, startServer, strayFiles, type TestServer } from '../deploy/helpers.js';

interface Ctx {
  stateDir: string;
  store: Store;
  models: string;
  server: TestServer;
  v1: Buffer;
}

/** A store whose model "m" has release "1" deployed over http and active. */
async function setup(t: ExecutionContext, config: DeployConfig = {}): Promise<Ctx> {
  const stateDir = join(tempDir(t, 'edgeq-deploy-'), 'state');
  const store = Store.open(storeFile(stateDir));
  t.teardown(() => store.close());
  const server = await startServer(t);
  const v1 = modelVariant('r1');
  server.route('/r1.onnx', { body: v1, modes: ['ok'] });
  const r = await deployManifest(store, stateDir, manifestFor('m', '1', server.url('/r1.onnx'), v1), { config });
  t.is(r.version, 1);
  return { stateDir, store, models: modelsDir(stateDir), server, v1 };
}

/** The previous version (v1) is still the active one, its file intact, and nothing else is left in the directory. */
async function unchanged(t: ExecutionContext, c: Ctx): Promise<void> {
  const a = c.store.activeVersion('m');
  t.is(a?.version, 1);
  t.is(await sha256File(a!.path), sha256(c.v1));
  t.deepEqual(strayFiles(c.models), []);
  t.deepEqual(onnxFiles(c.models), [`${sha256(c.v1)}.onnx`]);
  t.deepEqual(c.store.integrityCheck(), ['ok']);
}

async function refused(t: ExecutionContext, p: Promise<unknown>, code: string): Promise<void> {
  const e = await t.throwsAsync(p);
  t.is((e as { code?: string }).code, code, e?.message);
}

test('a good download becomes the active version; the previous one is kept', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['ok'] });
  const r = await deployManifest(c.store, c.stateDir, manifestFor('m', '2.0.0', c.server.url('/r2.onnx'), v2));
  t.like(r, { model: 'm', version: 2, release: '2.0.0', outcome: 'downloaded', previous: 1, resumedFrom: 0, transferred: v2.length, signature: 'unsigned' });
  const a = c.store.activeVersion('m')!;
  t.like(a, { version: 2, release: '2.0.0', sha256: sha256(v2), path: fileOf(c.models, sha256(v2)) });
  t.is(a.inputs.length, 1);
  t.deepEqual(strayFiles(c.models), []);
  t.is(onnxFiles(c.models).length, 2);
  // The same manifest again changes nothing; the same release with other bytes is refused.
  t.like(await deployManifest(c.store, c.stateDir, manifestFor('m', '2.0.0', c.server.url('/r2.onnx'), v2)), { outcome: 'already-active', version: 2 });
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2.0.0', c.server.url('/r1.onnx'), c.v1)), 'E_RELEASE_CONFLICT');
});

test('a wrong sha256 is refused, the download deleted, the previous version stays active', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['ok'] });
  await refused(t, deployManifest(c.store, c.stateDir, { ...manifestFor('m', '2', c.server.url('/r2.onnx'), v2), sha256: 'ab'.repeat(32) }), 'E_CHECKSUM_MISMATCH');
  await unchanged(t, c);
  t.is(c.store.listVersions('m').length, 1);
});

test('signatures: a wrong one and a missing required one are refused before any download; a good one verifies', async (t) => {
  const dir = tempDir(t, 'edgeq-keys-');
  const good = generateKeyPairSync('ed25519');
  const other = generateKeyPairSync('ed25519');
  const pub = join(dir, 'pub.pem');
  writeFileSync(pub, good.publicKey.export({ type: 'spki', format: 'pem' }));
  const config: DeployConfig = { publicKeys: [pub], requireSignature: true };
  const c = await setup(t, { publicKeys: [pub] });
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['ok'] });
  const m = manifestFor('m', '2', c.server.url('/r2.onnx'), v2);
  const before = c.server.requests.length;
  await refused(t, deployManifest(c.store, c.stateDir, { ...m, signature: signManifest(m, other.privateKey) }, { config }), 'E_SIGNATURE_INVALID');
  // A signature of the right key over other content (a changed url) does not verify either.
  await refused(t, deployManifest(c.store, c.stateDir, { ...m, signature: signManifest({ ...m, url: 'http://elsewhere/x.onnx' }, good.privateKey) }, { config }), 'E_SIGNATURE_INVALID');
  await refused(t, deployManifest(c.store, c.stateDir, m, { config }), 'E_SIGNATURE_REQUIRED');
  t.is(c.server.requests.length, before);
  await unchanged(t, c);
  const r = await deployManifest(c.store, c.stateDir, { ...m, signature: signManifest(m, good.privateKey) }, { config });
  t.like(r, { signature: 'verified', version: 2 });
});

test('a truncated transfer keeps its .part and the next deploy resumes it with Range', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  const cut = 200_000;
  c.server.route('/r2.onnx', { body: v2, modes: ['truncate', 'ok'], cut });
  const m = manifestFor('m', '2', c.server.url('/r2.onnx'), v2);
  await refused(t, deployManifest(c.store, c.stateDir, m, { config: { timeoutMs: 5000 } }), 'E_DOWNLOAD');
  t.is(c.store.activeVersion('m')?.version, 1);
  const part = join(c.models, `${m.sha256}.part`);
  t.is(statSync(part).size, cut);
  const r = await deployManifest(c.store, c.stateDir, m);
  t.like(r, { version: 2, outcome: 'downloaded', resumedFrom: cut, transferred: v2.length - cut, rangeIgnored: false });
  t.is(c.server.requests.at(-1)?.range, `bytes=${cut}-`);
  t.false(existsSync(part));
  t.deepEqual(strayFiles(c.models), []);
  t.is(await sha256File(c.store.activeVersion('m')!.path), m.sha256);
});

test('a server that ignores Range: the resumed download starts over from byte 0', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['truncate', 'ignore-range'] });
  const m = manifestFor('m', '2', c.server.url('/r2.onnx'), v2);
  await refused(t, deployManifest(c.store, c.stateDir, m), 'E_DOWNLOAD');
  const r = await deployManifest(c.store, c.stateDir, m);
  t.like(r, { version: 2, resumedFrom: Math.floor(v2.length / 2), transferred: v2.length, rangeIgnored: true });
  t.truthy(c.server.requests.at(-1)?.range);
  t.deepEqual(strayFiles(c.models), []);
  t.is(await sha256File(c.store.activeVersion('m')!.path), m.sha256);
});

test('a server answering 416 to Range: the download starts over', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['truncate', 'no-range'] });
  const m = manifestFor('m', '2', c.server.url('/r2.onnx'), v2);
  await refused(t, deployManifest(c.store, c.stateDir, m), 'E_DOWNLOAD');
  t.like(await deployManifest(c.store, c.stateDir, m), { version: 2, rangeIgnored: true });
  t.deepEqual(strayFiles(c.models), []);
});

test('a size over the cap is refused before downloading; a server sending another size is refused', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['ok'] });
  const before = c.server.requests.length;
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2', c.server.url('/r2.onnx'), v2), { config: { maxBytes: 100_000 } }), 'E_ARTIFACT_TOO_LARGE');
  t.is(c.server.requests.length, before);
  await unchanged(t, c);
  // The manifest claims fewer bytes than the server sends.
  await refused(t, deployManifest(c.store, c.stateDir, { ...manifestFor('m', '2', c.server.url('/r2.onnx'), v2), size: v2.length - 10 }), 'E_SIZE_MISMATCH');
  await unchanged(t, c);
  // A server whose Content-Length is over the cap though the manifest's size is not.
  c.server.route('/liar.onnx', { body: v2, modes: ['ok'], claimLength: 10_000_000 });
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2', c.server.url('/liar.onnx'), v2), { config: { maxBytes: 1_000_000 } }), 'E_ARTIFACT_TOO_LARGE');
  await unchanged(t, c);
});

test('not enough disk space (a config floor) is refused before downloading', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['ok'] });
  const before = c.server.requests.length;
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2', c.server.url('/r2.onnx'), v2), { config: { minFreeBytes: 2 ** 52 } }), 'E_DISK_SPACE');
  t.is(c.server.requests.length, before);
  await unchanged(t, c);
});

test('a file that fails the warm-up is not activated and not kept', async (t) => {
  const c = await setup(t);
  const junk = Buffer.from('this is not an onnx model at all, just bytes'.repeat(50));
  c.server.route('/junk.onnx', { body: junk, modes: ['ok'] });
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2', c.server.url('/junk.onnx'), junk)), 'E_WARMUP_FAILED');
  await unchanged(t, c);
});

test('local files only from deploy.allow directories', async (t) => {
  const c = await setup(t);
  const dir = tempDir(t, 'edgeq-artifacts-');
  const allowed = join(dir, 'allowed');
  mkdirSync(allowed);
  const v2 = modelVariant('r2');
  writeFileSync(join(allowed, 'r2.onnx'), v2);
  writeFileSync(join(dir, 'r2.onnx'), v2);
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2', join(dir, 'r2.onnx'), v2), { config: { allow: [allowed] } }), 'E_SOURCE_NOT_ALLOWED');
  await refused(t, deployManifest(c.store, c.stateDir, manifestFor('m', '2', join(allowed, '..', 'r2.onnx'), v2), { config: { allow: [allowed] } }), 'E_SOURCE_NOT_ALLOWED');
  await unchanged(t, c);
  const r = await deployManifest(c.store, c.stateDir, manifestFor('m', '2', 'r2.onnx', v2), { config: { allow: [allowed] }, baseDir: allowed });
  t.like(r, { version: 2, outcome: 'downloaded' });
  t.deepEqual(strayFiles(c.models), []);
});

test('keepVersions prunes the oldest versions and their files, never the active one nor a pending one\'s fallback', async (t) => {
  const c = await setup(t);
  for (const tag of ['r2', 'r3', 'r4']) {
    const b = modelVariant(tag);
    c.server.route(`/${tag}.onnx`, { body: b, modes: ['ok'] });
    const r = await deployManifest(c.store, c.stateDir, manifestFor('m', tag, c.server.url(`/${tag}.onnx`), b), { config: { keepVersions: 2 } });
    t.true(r.pending);
    if (tag !== 'r4') t.true(c.store.confirmActivation('m', r.version)); // as the endpoint does after serving it
  }
  // v4 is pending; its fallback v3 is among the newest two anyway.
  t.deepEqual(c.store.listVersions('m').map((v) => v.version), [3, 4]);
  t.is(onnxFiles(c.models).length, 2);
  t.false(existsSync(fileOf(c.models, sha256(c.v1))));
  // Roll back to v3 (no probation), then deploy r5 with keep 1: v4 goes; v3 stays as long as v5 is pending.
  await rollbackModel(c.store, 'm');
  t.is(c.store.activeVersion('m')?.version, 3);
  t.is(c.store.pendingActivation('m'), undefined);
  const b5 = modelVariant('r5');
  c.server.route('/r5.onnx', { body: b5, modes: ['ok'] });
  const r = await deployManifest(c.store, c.stateDir, manifestFor('m', 'r5', c.server.url('/r5.onnx'), b5), { config: { keepVersions: 1 } });
  t.deepEqual(r.pruned.map((p) => p.version), [4]);
  t.deepEqual(c.store.listVersions('m').map((v) => v.version), [3, 5]);
  t.true(c.store.confirmActivation('m', 5));
  t.deepEqual(pruneModel(c.store, c.stateDir, 'm', 1).map((p) => p.version), [3]);
  t.deepEqual(c.store.listVersions('m').map((v) => v.version), [5]);
  t.deepEqual(onnxFiles(c.models), [`${sha256(b5)}.onnx`]);
  t.deepEqual(c.store.integrityCheck(), ['ok']);
});

test('activate NAME@VERSION and rollback', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['ok'] });
  await deployManifest(c.store, c.stateDir, manifestFor('m', '2.1', c.server.url('/r2.onnx'), v2));
  t.is(resolveVersionRef(c.store, 'm@2.1').version, 2);
  t.is(resolveVersionRef(c.store, 'm@v1').version, 1);
  t.is(resolveVersionRef(c.store, 'm@1').version, 1); // release "1"
  t.throws(() => resolveVersionRef(c.store, 'm@9'), { message: /no version/ });
  const rb = await rollbackModel(c.store, 'm');
  t.is(rb.version.version, 1);
  t.is(rb.previous?.version, 2);
  await refused(t, rollbackModel(c.store, 'm'), 'E_NO_PREVIOUS');
  await activateVersion(c.store, 'm', 2);
  t.is(c.store.activeVersion('m')?.version, 2);
  // A version whose file is damaged is never activated.
  writeFileSync(c.store.getVersion('m', 1)!.path, readFileSync(c.store.getVersion('m', 1)!.path).subarray(0, 100));
  await refused(t, activateVersion(c.store, 'm', 1), 'E_FILE_NOT_FOUND');
  await refused(t, rollbackModel(c.store, 'm'), 'E_NO_PREVIOUS');
  t.is(c.store.activeVersion('m')?.version, 2);
});

test('a stalled transfer times out (deploy.timeoutMs), keeps its .part and resumes', async (t) => {
  const c = await setup(t);
  const v2 = modelVariant('r2');
  c.server.route('/r2.onnx', { body: v2, modes: ['stall', 'ok'], cut: 100_000 });
  const m = manifestFor('m', '2', c.server.url('/r2.onnx'), v2);
  await refused(t, deployManifest(c.store, c.stateDir, m, { config: { timeoutMs: 300 } }), 'E_DOWNLOAD');
  t.is(c.store.activeVersion('m')?.version, 1);
  t.like(await deployManifest(c.store, c.stateDir, m), { version: 2, resumedFrom: 100_000 });
  t.deepEqual(strayFiles(c.models), []);
});
