/**
 * deploy, activate and rollback as fleet commands: the daemon fetches a manifest's model from a
 * directory its config allows, activates it, and switches back and forth on command; a manifest
 * with a wrong sha256 fails and leaves the active version alone.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TERMINAL } from '../../agent/protocol/messages.js';
import { storeFile } from '../../agent/state.js';
import { Store } from '../../agent/store/index.js';
import { body, device, prepare, replyTo, spawnDaemon, watch, type Device, type Observer } from '../helpers/daemon.js';
import { FMNIST } from '../helpers/fixtures.js';
import { anyBroker, serviceTest } from '../helpers/mosquitto.js';

const { missing, url: brokerUrl } = await anyBroker();

async function command(o: Observer, d: Device, cmd: Record<string, unknown>): Promise<Record<string, unknown>> {
  const from = o.messages.length;
  await o.publish(d.cmd, JSON.stringify(cmd));
  return body(await o.waitFor(replyTo(d, cmd.id as string, ...TERMINAL), `the final reply to ${String(cmd.id)}`, from));
}

serviceTest('deploy, activate and rollback over MQTT', missing, async (t) => {
  const url = await brokerUrl(t);
  const d = device();
  const o = await watch(t, url, d);
  const p = await prepare(t, url, d, {}, 20); // registers fmnist v1
  // An artifact directory the config allows.
  const artifacts = join(p.dir, 'artifacts');
  mkdirSync(artifacts);
  const file = join(artifacts, 'fmnist-2.onnx');
  copyFileSync(FMNIST.model, file);
  const cfg = JSON.parse(readFileSync(p.config, 'utf8')) as Record<string, unknown>;
  writeFileSync(p.config, JSON.stringify({ ...cfg, deploy: { allow: [artifacts], minFreeBytes: 1 } }));
  const sha256 = createHash('sha256').update(readFileSync(file)).digest('hex');
  const manifest = { name: 'fmnist', version: '2.0.0', url: file, sha256, size: statSync(file).size };
  const daemon = spawnDaemon(t, p.config);
  // The birth comes after the daemon subscribed to its commands.
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');

  const bad = await command(o, d, { id: 'dep-bad', type: 'deploy', args: { manifest: { ...manifest, version: '2.0.1', sha256: 'f'.repeat(64) } } });
  t.is(bad.state, 'failed');
  t.regex((bad.error as { code: string }).code, /E_CHECKSUM_MISMATCH|E_SIZE_MISMATCH/);

  const dep = await command(o, d, { id: 'dep-1', type: 'deploy', args: { manifest } });
  t.is(dep.state, 'succeeded', JSON.stringify(dep));
  t.is((dep.result as { pending: boolean }).pending, true);
  const back = await command(o, d, { id: 'rb-1', type: 'rollback', args: { model: 'fmnist' } });
  t.is(back.state, 'succeeded', JSON.stringify(back));
  t.is((back.result as { active: number }).active, 1);
  const again = await command(o, d, { id: 'act-1', type: 'activate', args: { model: 'fmnist', version: '2.0.0' } });
  t.is(again.state, 'succeeded', JSON.stringify(again));
  t.is((again.result as { active: number }).active, 2);
  t.is((again.result as { pending: boolean }).pending, true, 'activated over v1: on probation');
  // The retained status tells the fleet the active version is still pending.
  await o.waitFor((m) => m.topic === d.status && (m.json?.models as Record<string, { version: number; pending?: boolean }> | undefined)?.fmnist?.version === 2
    && (m.json?.models as Record<string, { pending?: boolean }>).fmnist.pending === true, 'a status with fmnist v2 pending');
  const none = await command(o, d, { id: 'act-2', type: 'activate', args: { model: 'fmnist', version: 9 } });
  t.is(none.state, 'failed');

  daemon.child.kill('SIGTERM');
  t.is((await daemon.exited).code, 0);
  const store = Store.open(storeFile(p.stateDir));
  try {
    t.is(store.activeVersion('fmnist')!.version, 2);
    t.is(store.activeVersion('fmnist')!.release, '2.0.0');
    t.deepEqual(store.integrityCheck(), ['ok']);
  } finally {
    store.close();
  }
});
