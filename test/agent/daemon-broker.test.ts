/**
 * The daemon against a broker that goes away: each test runs its own mosquitto (persistence on,
 * so sessions and queued messages survive its restart) and stops and restarts it.
 */
import { readFileSync } from 'node:fs';
import { parseReport } from '../../agent/protocol/report.js';
import { TERMINAL } from '../../agent/protocol/messages.js';
import { storeFile } from '../../agent/state.js';
import { Store } from '../../agent/store/index.js';
import { body, device, prepare, replyTo, spawnDaemon, uniqueId, watch, WAIT_MS } from '../helpers/daemon.js';
import { tempDir } from '../helpers/fixtures.js';
import { makePki, mosquittoMissing, opensslMissing, serviceTest, startMosquitto } from '../helpers/mosquitto.js';

const missing = mosquittoMissing();

/** Polls `cond` every 100 ms until it holds (or fails after WAIT_MS). */
async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

serviceTest('broker stopped during a run and restarted later: the report arrives exactly once, before the final reply', missing, async (t) => {
  const broker = await startMosquitto(t);
  const d = device();
  // The fleet side keeps a persistent session too, so what the device sends while the fleet is
  // still reconnecting waits for it at the broker.
  const o = await watch(t, broker.url, d, { clientId: uniqueId('fleet'), clean: false, properties: { sessionExpiryInterval: 300 }, reconnectPeriod: 200 });
  const p = await prepare(t, broker.url, d);
  const daemon = spawnDaemon(t, p.config);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');

  await o.publish(d.cmd, JSON.stringify({ id: 'r1', type: 'optimize', args: { model: 'fmnist', runs: 2000 } }));
  await o.waitFor(replyTo(d, 'r1', 'running'), 'r1 running');
  await broker.stop();

  // The job finishes while the broker is down: its report and reply wait in the outbox.
  const store = Store.open(storeFile(p.stateDir));
  t.teardown(() => store.close());
  await until('the job is over', () => store.countJobs() === 0);
  t.true(store.peekOutbox(100).some((m) => m.kind === 'report'), 'the report waits in the outbox');
  await daemon.waitLog('mqtt-disconnected');

  await broker.start();
  const done = await o.waitFor(replyTo(d, 'r1', ...TERMINAL), 'the final reply after the restart');
  t.is(body(done).state, 'succeeded', JSON.stringify(body(done).error));
  // A status round trip: all the device sent before it has arrived.
  const from = o.messages.length;
  await o.publish(d.cmd, JSON.stringify({ id: 'barrier', type: 'status' }));
  await o.waitFor(replyTo(d, 'barrier'), 'the barrier reply', from);

  const reports = o.all(d.report);
  t.is(reports.length, 1, 'exactly one report');
  const report = parseReport(reports[0].json);
  t.true(report.ok, report.ok ? '' : report.error);
  t.is(report.ok && report.value.id, (body(done).result as { reportId: string }).reportId);
  t.true(o.messages.indexOf(reports[0]) < o.messages.indexOf(done), 'the report comes before the final reply');
  t.is(o.all(d.reply, (j) => j.cmdId === 'r1' && TERMINAL.has(j.state as never)).length, 1);
  t.is(store.outboxSize(), 0);
  // The device came back with a new birth.
  const births = o.all(d.status, (j) => j.online === true);
  t.true(births.length >= 2);
  t.true((births.at(-1)!.json!.seq as number) > (births[0].json!.seq as number));
});

serviceTest('a daemon started while the broker is down connects when it comes up; commands sent while the daemon was stopped are answered at its next start', missing, async (t) => {
  const broker = await startMosquitto(t);
  const d = device();
  const p = await prepare(t, broker.url, d, {}, 0);
  await broker.stop();

  const daemon = spawnDaemon(t, p.config, ['--no-endpoint']);
  const ready = await daemon.waitLog('ready');
  t.is(ready.connected, false);
  await broker.start();
  const o = await watch(t, broker.url, d);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth once the broker is up');

  // Stop the daemon; its session (and subscription) stays at the broker.
  daemon.child.kill('SIGTERM');
  t.deepEqual(await daemon.exited, { code: 0, signal: null });
  await o.publish(d.cmd, JSON.stringify({ id: 'while-down', type: 'status' }));
  const from = o.messages.length;
  spawnDaemon(t, p.config, ['--no-endpoint']);
  const r = body(await o.waitFor(replyTo(d, 'while-down'), 'the reply to the command sent while the daemon was down', from));
  t.is(r.state, 'succeeded');
});

serviceTest('mutual TLS: with the CA and a client certificate the daemon connects; without the certificate the broker refuses it', missing ?? opensslMissing(), async (t) => {
  const pki = makePki(tempDir(t, 'edgeq-pki-'));
  const broker = await startMosquitto(t, { tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireCertificate: true } });
  t.regex(broker.url, /^mqtts:/);
  const d = device();
  const o = await watch(t, broker.url, d, { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) });
  const p = await prepare(t, broker.url, d, { broker: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } }, 0);
  spawnDaemon(t, p.config, ['--no-endpoint']);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth over TLS');
  const from = o.messages.length;
  await o.publish(d.cmd, JSON.stringify({ id: 'tls-1', type: 'status' }));
  t.is(body(await o.waitFor(replyTo(d, 'tls-1'), 'the reply over TLS', from)).state, 'succeeded');

  // The same device without a client certificate: the broker says no, and the daemon keeps trying.
  const d2 = device();
  const p2 = await prepare(t, broker.url, d2, { broker: { ca: pki.ca } }, 0);
  const refused = spawnDaemon(t, p2.config, ['--no-endpoint']);
  const ready = await refused.waitLog('ready');
  t.is(ready.connected, false);
  await refused.waitLog('mqtt-reconnect-scheduled');
});
