/**
 * Certificates as identities: a private mosquitto with require_certificate,
 * use_identity_as_username and the fleet ACL (test/helpers/mosquitto.ts: makeFleetPki, edgeqAcl,
 * startFleetBroker — the set-up docs/mqtt-security.md describes for production brokers).
 *
 *   - a real daemon with its device certificate and the real `edgeq fleet` with the controller's
 *     certificate work end to end, also through a shared subscription;
 *   - no client certificate, or one from another CA: the TLS handshake is refused (raw client and
 *     daemon; the daemon says why, and retries under its backoff);
 *   - device A's valid certificate on device B's topics: PUBACK 135, nothing reaches B; what A
 *     subscribes to of B's is never delivered to it; the controller CLI with a device's
 *     certificate is refused;
 *   - a daemon whose device id is not its certificate's CN: one clear error naming the topic,
 *     "not authorized" and the CN, retried under the backoff on the same connection.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions } from 'mqtt';
import { TERMINAL, type Reply } from '../../agent/protocol/messages.js';
import { FleetController } from '../../fleet/controller.js';
import { openSqliteStore } from '../../fleet/store/sqlite.js';
import { device, Observer, prepare, spawnDaemon, uniqueId, WAIT_MS, type DaemonProcess } from '../helpers/daemon.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import {
  edgeqAcl, makeFleetPki, MOSQUITTO_BIN, mosquittoMissing, opensslMissing, serviceTest, startFleetBroker,
  type CertPair, type FleetPki,
} from '../helpers/mosquitto.js';
import { fleetCli } from './helpers.js';

const missing = mosquittoMissing() ?? opensslMissing();
/** prepare()'s reconnect backoff for the daemons here. */
const BACKOFF = { baseMs: 200, capMs: 1000 };

/** mqtt.js options presenting `pair` (and trusting the fleet CA). */
function tlsOpts(pki: FleetPki, pair?: CertPair, ca = pki.ca): IClientOptions {
  return { ca: readFileSync(ca), ...(pair ? { cert: readFileSync(pair.cert), key: readFileSync(pair.key) } : {}) };
}

/** One connection attempt without retries: the CONNACK's reason code, or the error that ended it. */
function connectOnce(url: string, opts: IClientOptions): Promise<{ connack?: number; error?: Error & { code?: unknown } }> {
  return new Promise((resolve) => {
    const c = mqtt.connect(url, { protocolVersion: 5, clientId: uniqueId('probe'), reconnectPeriod: 0, connectTimeout: 5000, ...opts });
    let error: (Error & { code?: unknown }) | undefined;
    c.on('connect', (ack) => {
      c.end(true);
      resolve({ connack: ack.reasonCode ?? 0 });
    });
    c.on('error', (e) => (error ??= e));
    c.on('close', () => {
      c.end(true);
      resolve({ error });
    });
  });
}

/** A connected raw MQTT 5 client, ended when the test ends. */
async function rawClient(t: ExecutionContext, url: string, opts: IClientOptions): Promise<mqtt.MqttClient> {
  const c = mqtt.connect(url, { protocolVersion: 5, clientId: uniqueId('raw'), reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  await new Promise<void>((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
  });
  c.on('error', () => {});
  t.teardown(() => c.endAsync(true).catch(() => undefined));
  return c;
}

/** PUBLISH QoS 1: the PUBACK's reason code (0 when accepted). */
function pubackCode(c: mqtt.MqttClient, topic: string, payload: string, retain = false): Promise<number> {
  return new Promise((resolve, reject) => {
    c.publish(topic, payload, { qos: 1, retain }, (err) => {
      if (!err) return resolve(0);
      const code = (err as { code?: unknown }).code;
      return typeof code === 'number' ? resolve(code) : reject(err);
    });
  });
}

/** SUBSCRIBE QoS 1: the SUBACK's reason code per filter (mqtt.js fails the call on a refusal; the packet still says which). */
function subackCodes(c: mqtt.MqttClient, filters: string[]): Promise<number[]> {
  return new Promise((resolve, reject) => {
    c.subscribe(filters, { qos: 1 }, (err, _granted, packet) => {
      if (packet?.granted) return resolve(packet.granted.map(Number));
      return err ? reject(err) : reject(new Error('no SUBACK'));
    });
  });
}

/** Waits until the daemon has logged `n` events that satisfy `pred`; returns them. */
async function logged(d: DaemonProcess, what: string, pred: (l: Record<string, unknown>) => boolean, n = 1): Promise<Array<Record<string, unknown>>> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const hits = d.logs.filter(pred);
    if (hits.length >= n) return hits;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} × ${what}:\n${d.stderr().slice(-4000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The largest delay backoffDelay can give for `attempt` (0-based): min(cap, base · 2^attempt). */
const ceiling = (attempt: number) => Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** attempt);

/**
 * The reconnects after refused handshakes: counted up one by one (no reset in between, so the
 * delay ceiling grows to the cap), each delay within backoffDelay's bound, and never connected.
 */
async function assertBackoff(t: ExecutionContext, daemon: DaemonProcess): Promise<void> {
  const scheduled = await logged(daemon, 'mqtt-reconnect-scheduled', (l) => l.event === 'mqtt-reconnect-scheduled', 4);
  t.deepEqual(scheduled.slice(0, 4).map((l) => l.failures), [1, 2, 3, 4], 'each refused attempt counts as one more failure');
  for (const l of scheduled) t.true((l.delayMs as number) < ceiling((l.failures as number) - 1), `delay ${String(l.delayMs)} ms within the backoff ceiling of failure ${String(l.failures)}`);
  t.false(daemon.logs.some((l) => l.event === 'mqtt-connected'), 'never connected');
}

/** mosquitto's version ("2.0.11"), from its usage text. */
function mosquittoVersion(): string {
  const r = spawnSync(MOSQUITTO_BIN, ['-h'], { encoding: 'utf8' });
  return /mosquitto version (\S+)/.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`)?.[1] ?? 'unknown';
}

// ---------------------------------------------------------------------------------------------

test('docs/mqtt-security.md shows the ACL the tests enforce, for the default prefix', (t) => {
  const doc = readFileSync(join(ROOT, 'docs/mqtt-security.md'), 'utf8');
  t.true(doc.includes(edgeqAcl()), `docs/mqtt-security.md must contain edgeqAcl() verbatim:\n${edgeqAcl()}`);
  for (const line of ['require_certificate true', 'use_identity_as_username true', 'acl_file ', 'allow_anonymous false']) t.true(doc.includes(line), line);
});

serviceTest('TLS + ACL: the daemon with its certificate and the fleet CLI with the controller\'s work end to end, a shared subscription too', missing, async (t) => {
  const d = device();
  const pki = makeFleetPki(tempDir(t, 'edgeq-pki-'), { devices: [d.id] });
  const broker = await startFleetBroker(t, pki, d.prefix);
  const p = await prepare(t, broker.url, d, { broker: { ca: pki.ca, cert: pki.devices[d.id].cert, key: pki.devices[d.id].key } }, 0);
  const daemon = spawnDaemon(t, p.config, ['--no-endpoint']);
  t.true((await daemon.waitLog('ready')).connected, 'the daemon connected with its certificate');

  const common = ['--broker', broker.url, '--prefix', d.prefix, '--tls-ca', pki.ca, '--tls-cert', pki.controller.cert, '--tls-key', pki.controller.key, '--db', join(p.dir, 'fleet.db')];
  // The birth reaches the controller (its retained status, read under the ACL).
  let listed: Array<{ deviceId?: string; id?: string; online: boolean | null }> = [];
  for (let i = 0; i < 50 && !listed.some((x) => (x.deviceId ?? x.id) === d.id && x.online); i++) {
    const devices = await fleetCli(['devices', ...common, '--json']);
    t.is(devices.status, 0, devices.stderr);
    listed = JSON.parse(devices.stdout) as typeof listed;
    if (!listed.some((x) => (x.deviceId ?? x.id) === d.id)) await new Promise((r) => setTimeout(r, 200));
  }
  t.true(listed.some((x) => (x.deviceId ?? x.id) === d.id && x.online === true), JSON.stringify(listed));

  const sent = await fleetCli(['send', d.id, 'status', ...common, '--wait', '--json', '--timeout', '60']);
  t.is(sent.status, 0, `${sent.stderr}\n${sent.stdout}`);
  const lines = sent.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  const replies = lines.filter((l) => l.event === 'reply');
  t.is(replies.at(-1)?.state, 'succeeded', sent.stdout);
  t.is(replies.at(-1)?.deviceId, d.id);
  t.like(lines.at(-1), { event: 'done', ok: true, succeeded: [d.id] });

  // The controller on a shared subscription ($share/<group>/…/reply): mosquitto checks the read
  // ACL against the delivered topic, so `topic read <prefix>/+/reply` covers it.
  const store = await openSqliteStore(join(p.dir, 'shared.db'));
  t.teardown(() => store.close());
  const c = await FleetController.connect({
    broker: broker.url, prefix: d.prefix, tlsCa: pki.ca, tlsCert: pki.controller.cert, tlsKey: pki.controller.key,
    store, share: `g${uniqueId('s').slice(-6)}`, log: () => undefined,
  });
  t.teardown(() => c.close());
  await c.subscribe({ status: true, reply: 'fleet', report: 'fleet' });
  const answered = new Promise<Reply>((resolve) => c.on('reply', (id, r) => id === d.id && r.cmdId === 'shared-1' && TERMINAL.has(r.state) && resolve(r)));
  await c.send([d.id], { id: 'shared-1', type: 'status', args: {} }, 60);
  t.is((await answered).state, 'succeeded');

  t.deepEqual(daemon.logs.filter((l) => ['mqtt-refused', 'mqtt-tls-failed', 'outbox-publish-refused', 'birth-or-subscribe-failed'].includes(l.event as string)), [], 'the daemon was refused nothing');
  daemon.child.kill('SIGTERM');
  t.is((await daemon.exited).code, 0);
});

serviceTest('TLS: a client without a certificate is refused at the handshake; the daemon says so and backs off', missing, async (t) => {
  const d = device();
  const pki = makeFleetPki(tempDir(t, 'edgeq-pki-'), { devices: [d.id] });
  const broker = await startFleetBroker(t, pki, d.prefix);

  const r = await connectOnce(broker.url, tlsOpts(pki));
  t.is(r.connack, undefined, 'no CONNACK');
  // TLS 1.3: the broker's "certificate required" alert (TLS 1.2 would end in a handshake failure alert).
  t.true(['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE'].includes(String(r.error?.code)), `refused at the handshake: ${String(r.error?.code)} ${r.error?.message ?? ''}`);
  t.regex(readFileSync(join(broker.dir, 'mosquitto.log'), 'utf8'), /peer did not return a certificate/);

  const p = await prepare(t, broker.url, d, { broker: { ca: pki.ca } }, 0);
  const daemon = spawnDaemon(t, p.config, ['--no-endpoint']);
  t.false((await daemon.waitLog('ready')).connected);
  const failed = await logged(daemon, 'mqtt-tls-failed', (l) => l.event === 'mqtt-tls-failed', 2);
  t.like(failed[0], { level: 'error', by: 'broker', kind: 'certificate-required', url: broker.url });
  t.regex(failed[0].reason as string, /the broker refused the TLS handshake: it requires a client certificate/);
  t.regex(failed[0].hint as string, /broker\.cert and broker\.key/);
  t.false(daemon.logs.some((l) => l.event === 'mqtt-error' && String(l.code).startsWith('ERR_SSL')), 'every TLS refusal explained, no raw OpenSSL error lines');
  await assertBackoff(t, daemon);
});

serviceTest('TLS: a certificate from another CA is refused at the handshake (unknown CA); the daemon says so and backs off', missing, async (t) => {
  const d = device();
  const pki = makeFleetPki(tempDir(t, 'edgeq-pki-'), { devices: [d.id] });
  const broker = await startFleetBroker(t, pki, d.prefix);

  // Same CN as the real device, wrong issuer.
  const r = await connectOnce(broker.url, tlsOpts(pki, pki.other.client));
  t.is(r.connack, undefined, 'no CONNACK');
  t.is(r.error?.code, 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', r.error?.message);
  t.regex(readFileSync(join(broker.dir, 'mosquitto.log'), 'utf8'), /certificate verify failed/);

  const p = await prepare(t, broker.url, d, { broker: { ca: pki.ca, cert: pki.other.client.cert, key: pki.other.client.key } }, 0);
  const daemon = spawnDaemon(t, p.config, ['--no-endpoint']);
  t.false((await daemon.waitLog('ready')).connected);
  const [failed] = await logged(daemon, 'mqtt-tls-failed', (l) => l.event === 'mqtt-tls-failed');
  t.like(failed, { level: 'error', by: 'broker', kind: 'unknown-ca' });
  t.regex(failed.reason as string, /unknown CA/);
  t.regex(failed.hint as string, /issued by CN=edgeq test unrelated CA/);
  t.like(failed.certificate, { subject: `CN=${d.id}`, issuer: 'CN=edgeq test unrelated CA' });
  await assertBackoff(t, daemon);
});

serviceTest('ACL: device A\'s certificate cannot publish to or read device B\'s topics; the controller CLI with a device certificate is refused', missing, async (t) => {
  const prefix = device().prefix;
  const [a, b] = [uniqueId('dev-a'), uniqueId('dev-b')];
  const pki = makeFleetPki(tempDir(t, 'edgeq-pki-'), { devices: [a, b] });
  const broker = await startFleetBroker(t, pki, prefix);
  const tp = (id: string, ch: string) => `${prefix}/${id}/${ch}`;

  // Device B (a raw client with B's certificate) listens on its cmd topic and publishes its status.
  const devB = await Observer.connect(t, broker.url, tlsOpts(pki, pki.devices[b]));
  await devB.subscribe(tp(b, 'cmd'));
  t.is(await pubackCode(devB.client, tp(b, 'status'), JSON.stringify({ online: true, deviceId: b }), true), 0, 'B may publish its own status');
  // The controller watches every status and reply.
  const fleet = await Observer.connect(t, broker.url, tlsOpts(pki, pki.controller));
  await fleet.subscribe([`${prefix}/+/status`, `${prefix}/+/reply`, `${prefix}/+/report`]);
  await fleet.waitFor((m) => m.topic === tp(b, 'status'), "B's retained status reaches the controller");

  // A publishes on B's topics: every PUBLISH is answered PUBACK 135 (not authorized).
  const devA = await rawClient(t, broker.url, tlsOpts(pki, pki.devices[a]));
  t.is(await pubackCode(devA, tp(b, 'cmd'), JSON.stringify({ id: 'evil-1', type: 'status' })), 135, "A → B's cmd");
  t.is(await pubackCode(devA, tp(b, 'status'), JSON.stringify({ online: false, deviceId: b }), true), 135, "A → B's retained status");
  t.is(await pubackCode(devA, tp(b, 'reply'), JSON.stringify({ cmdId: 'x', deviceId: b, state: 'succeeded' })), 135, "A → B's reply");
  t.is(await pubackCode(devA, tp(b, 'report'), '{}'), 135, "A → B's report");
  t.is(await pubackCode(devA, tp(a, 'reply'), JSON.stringify({ cmdId: 'own', deviceId: a, state: 'succeeded' })), 0, 'A → its own reply is accepted');
  // Nothing of A's reached B or the controller: B gets the controller's next command first,
  // and the controller A's own reply (the broker forwards in order; a refused message never).
  const fromB = devB.messages.length;
  await fleet.publish(tp(b, 'cmd'), JSON.stringify({ id: 'real-1', type: 'status' }));
  const firstForB = await devB.waitFor((m) => m.topic === tp(b, 'cmd'), "the controller's command to B", fromB);
  t.is(firstForB.json?.id, 'real-1');
  t.deepEqual(devB.messages.filter((m) => m.text.includes('evil-1')), [], 'A\'s command never reached B');
  await fleet.waitFor((m) => m.topic === tp(a, 'reply'), "A's own reply");
  t.deepEqual(fleet.messages.filter((m) => m.topic === tp(b, 'reply') || m.topic === tp(b, 'report')), [], 'no forged reply or report of B');
  t.deepEqual(fleet.messages.filter((m) => m.topic === tp(b, 'status')).map((m) => m.json?.online), [true], "B's status is B's own");

  // A subscribes to B's cmd and status. mosquitto 2.0's acl_file does not check SUBSCRIBE: it
  // grants it (QoS 1) and applies the read ACL to every message it would deliver, the retained
  // status included; a broker that checks subscriptions answers 135 (not authorized).
  const version = mosquittoVersion();
  const expected = /^2\.0\./.test(version) ? 1 : 135;
  t.deepEqual(await subackCodes(devA, [tp(b, 'cmd'), tp(b, 'status'), `${prefix}/+/cmd`]), [expected, expected, expected], `SUBACK from mosquitto ${version}`);
  t.deepEqual(await subackCodes(devA, [tp(a, 'cmd')]), [1], 'A may subscribe to its own cmd');
  const seenByA: string[] = [];
  devA.on('message', (topic) => seenByA.push(topic));
  await fleet.publish(tp(b, 'cmd'), JSON.stringify({ id: 'secret-for-b', type: 'status' }));
  await fleet.publish(tp(a, 'cmd'), JSON.stringify({ id: 'for-a', type: 'status' }));
  const deadline = Date.now() + WAIT_MS;
  while (!seenByA.includes(tp(a, 'cmd')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  // A's own command, sent after B's, arrived (once per matching subscription: its own and +/cmd);
  // B's command and B's retained status never did.
  t.true(seenByA.includes(tp(a, 'cmd')));
  t.deepEqual(seenByA.filter((topic) => topic !== tp(a, 'cmd')), [], 'nothing of B reached A');

  // The fleet CLI presenting a device's certificate: its command is refused, and it says why.
  const common = ['--broker', broker.url, '--prefix', prefix, '--tls-ca', pki.ca, '--tls-cert', pki.devices[a].cert, '--tls-key', pki.devices[a].key, '--db', join(pki.dir, 'fleet.db')];
  const sent = await fleetCli(['send', b, 'status', ...common, '--json']);
  t.is(sent.status, 1, sent.stdout);
  t.like(JSON.parse(sent.stdout), { ok: false, error: { code: 'E_NOT_AUTHORIZED' } });
  t.regex(sent.stdout, new RegExp(`refused the command to ${tp(b, 'cmd')}: not authorized`));
  t.deepEqual(devB.messages.filter((m) => m.topic === tp(b, 'cmd')).map((m) => m.json?.id), ['real-1', 'secret-for-b'], 'B got only the controller\'s commands');
});

serviceTest('ACL: a daemon whose device id is not its certificate\'s CN logs one clear error per try, retried under the backoff on the same connection', missing, async (t) => {
  const d = device();
  const cn = uniqueId('dev-cn');
  const pki = makeFleetPki(tempDir(t, 'edgeq-pki-'), { devices: [cn] });
  const broker = await startFleetBroker(t, pki, d.prefix);
  const fleet = await Observer.connect(t, broker.url, tlsOpts(pki, pki.controller));
  await fleet.subscribe(`${d.prefix}/+/status`);

  const p = await prepare(t, broker.url, d, { broker: { ca: pki.ca, cert: pki.devices[cn].cert, key: pki.devices[cn].key } }, 0);
  const daemon = spawnDaemon(t, p.config, ['--no-endpoint']);
  t.true((await daemon.waitLog('ready')).connected, 'the certificate is valid: the connection is accepted');
  const refused = await logged(daemon, 'mqtt-refused', (l) => l.event === 'mqtt-refused', 3);
  for (const l of refused.slice(0, 3)) {
    t.like(l, { level: 'error', operation: 'publish', topic: `${d.prefix}/${d.id}/status`, reasonCode: 135, reason: 'not authorized' });
    t.regex(l.message as string, new RegExp(`refused to let this client publish to ${d.prefix}/${d.id}/status: not authorized`));
    t.true((l.hint as string).includes(`the client certificate's CN is "${cn}" but the device id is "${d.id}"`), l.hint as string);
    t.regex(l.hint as string, /the certificate's CN must equal the device id/);
  }
  // Tries 1, 2, 3, each after a delay within the backoff's ceiling; the connection is kept (one
  // connect, no reconnects), so nothing spins.
  t.deepEqual(refused.slice(0, 3).map((l) => l.attempt), [1, 2, 3]);
  for (const l of refused) t.true((l.retryInMs as number) < ceiling((l.attempt as number) - 1), `retry in ${String(l.retryInMs)} ms within the ceiling of try ${String(l.attempt)}`);
  t.is(daemon.logs.filter((l) => l.event === 'mqtt-connected').length, 1);
  t.false(daemon.logs.some((l) => l.event === 'mqtt-reconnect-scheduled'));
  t.false(daemon.logs.some((l) => l.event === 'birth-or-subscribe-failed'), 'no vague error line');
  // The broker let none of it through.
  t.deepEqual(fleet.messages.filter((m) => m.topic.includes(d.id)), []);
});
