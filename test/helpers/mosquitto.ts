/**
 * Real MQTT brokers for tests: the shared mosquitto on 127.0.0.1:1883 where one runs (CI has
 * one), and private mosquitto processes on free ports for tests that stop and restart a broker
 * (persistence on, in a temporary directory, so sessions and queued messages survive a restart).
 *
 * Where a service is missing, `serviceTest` registers the test as skipped with the reason in its
 * title; with EDGEQ_REQUIRE_SERVICES=1 (CI) it registers a failing test instead.
 *
 * For the production set-up (docs/mqtt-security.md): `makeFleetPki` issues a throwaway CA, a
 * broker certificate and per-device client certificates with openssl; `edgeqAcl` writes the ACL
 * that confines each device to its own topics; `startFleetBroker` runs mosquitto with both
 * (require_certificate, use_identity_as_username, acl_file).
 */
import test, { type ExecutionContext, type ImplementationFn } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { MOSQUITTO_BIN, mosquittoConf } from '../../tools/mosquitto.js';
import { freePort, portOpen } from '../../tools/net.js';
import { join } from 'node:path';

export { freePort, portOpen };

export { MOSQUITTO_BIN };
/** EDGEQ_SHARED_BROKER_PORT points the tests at another shared broker (or, with a closed port, at private ones). */
export const SHARED_BROKER_PORT = Number(process.env.EDGEQ_SHARED_BROKER_PORT ?? 1883);
export const SHARED_BROKER_URL = `mqtt://127.0.0.1:${SHARED_BROKER_PORT}`;
export const REQUIRE_SERVICES = process.env.EDGEQ_REQUIRE_SERVICES === '1';

/** Why the shared broker cannot be used, or undefined when it can. */
export async function sharedBrokerMissing(): Promise<string | undefined> {
  return (await portOpen(SHARED_BROKER_PORT)) ? undefined : `no MQTT broker listens on 127.0.0.1:${SHARED_BROKER_PORT}`;
}

/** Why private brokers cannot be started, or undefined when they can. */
export function mosquittoMissing(): string | undefined {
  try {
    accessSync(MOSQUITTO_BIN, constants.X_OK);
    return undefined;
  } catch {
    return `no mosquitto binary at ${MOSQUITTO_BIN} (set EDGEQ_MOSQUITTO to its path)`;
  }
}

/**
 * Registers a test that needs a service: skipped (reason in the title) when `missing` names a
 * reason, failing instead when EDGEQ_REQUIRE_SERVICES=1. Serial: these tests spawn processes.
 */
export function serviceTest(title: string, missing: string | undefined, fn: ImplementationFn<[]>): void {
  if (missing === undefined) {
    test.serial(title, fn);
    return;
  }
  if (REQUIRE_SERVICES) {
    test.serial(title, (t) => {
      t.fail(`EDGEQ_REQUIRE_SERVICES=1 but ${missing}`);
    });
    return;
  }
  test.skip(`${title} — skipped: ${missing}`, () => {});
}

export interface Broker {
  port: number;
  url: string;
  dir: string;
  /** (Re)starts mosquitto on the same port with the same persistence; resolves once it listens. */
  start(): Promise<void>;
  /** SIGTERM (mosquitto saves its persistence file) and waits for the exit. */
  stop(): Promise<void>;
  running(): boolean;
  /** SIGHUP: mosquitto reloads its configuration, the ACL file included. */
  reload(): void;
}

export interface MosquittoOptions {
  /**
   * A TLS listener (PEM paths); with requireCertificate, clients must present a certificate the
   * CA signed; with useIdentityAsUsername, the certificate's CN is the client's user name (for the
   * ACL), anonymous clients are refused, and a user name the client sends is ignored.
   */
  tls?: { ca: string; cert: string; key: string; requireCertificate?: boolean; useIdentityAsUsername?: boolean };
  /** The text of an ACL file (mosquitto acl_file), written into the broker's directory. */
  acl?: string;
}

/** A private mosquitto on a free loopback port, persistence in a temp dir; stopped and removed when the test ends. */
export async function startMosquitto(t: ExecutionContext, opts: MosquittoOptions = {}): Promise<Broker> {
  const dir = mkdtempSync(join(tmpdir(), 'edgeq-mosquitto-'));
  const port = await freePort();
  const tls = opts.tls
    ? [
        `cafile ${opts.tls.ca}`, `certfile ${opts.tls.cert}`, `keyfile ${opts.tls.key}`, `require_certificate ${opts.tls.requireCertificate ? 'true' : 'false'}`,
        ...(opts.tls.useIdentityAsUsername ? ['use_identity_as_username true'] : []),
      ]
    : [];
  let acl: string[] = [];
  if (opts.acl !== undefined) {
    writeFileSync(join(dir, 'acl'), opts.acl);
    acl = [`acl_file ${join(dir, 'acl')}`];
  }
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, mosquittoConf({ port, dir, listenerLines: [...tls, ...acl], allowAnonymous: !opts.tls?.useIdentityAsUsername }));
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  const broker: Broker = {
    port,
    url: `${opts.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`,
    dir,
    async start() {
      if (child) throw new Error('mosquitto is already running');
      const c = spawn(MOSQUITTO_BIN, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      c.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      child = c;
      exited = new Promise((resolve) => c.once('exit', () => {
        child = undefined;
        resolve();
      }));
      for (let i = 0; i < 200; i++) {
        if (await portOpen(port, 200)) return;
        if (!child) throw new Error(`mosquitto exited at start: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error(`mosquitto did not listen on ${port}: ${stderr}`);
    },
    async stop() {
      if (!child) return;
      child.kill('SIGTERM');
      await exited;
    },
    running: () => child !== undefined,
    reload() {
      if (!child) throw new Error('mosquitto is not running');
      child.kill('SIGHUP');
    },
  };
  t.teardown(async () => {
    child?.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  });
  await broker.start();
  return broker;
}

/**
 * A broker URL for tests that only need a broker running: the shared one on 1883 when it is up,
 * else a private mosquitto for this test. `missing` says why neither is possible.
 */
export async function anyBroker(): Promise<{ missing: string | undefined; url: (t: ExecutionContext) => Promise<string> }> {
  const shared = await sharedBrokerMissing();
  if (shared === undefined) return { missing: undefined, url: async () => SHARED_BROKER_URL };
  const bin = mosquittoMissing();
  return { missing: bin === undefined ? undefined : `${shared}, and ${bin}`, url: async (t) => (await startMosquitto(t)).url };
}

/** Why TLS test certificates cannot be made, or undefined when they can. */
export function opensslMissing(): string | undefined {
  try {
    accessSync('/usr/bin/openssl', constants.X_OK);
    return undefined;
  } catch {
    return 'no /usr/bin/openssl to make test certificates';
  }
}

export interface TestPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl in `dir`. */
export function makePki(dir: string): TestPki {
  const run = (...args: string[]) => {
    const r = spawnSync('/usr/bin/openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=edgeq test CA');
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext');
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'client.key', '-out', 'client.csr', '-subj', '/CN=edgeq-device');
  run('x509', '-req', '-in', 'client.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'client.pem', '-days', '2');
  return { ca: join(dir, 'ca.pem'), serverCert: join(dir, 'server.pem'), serverKey: join(dir, 'server.key'), clientCert: join(dir, 'client.pem'), clientKey: join(dir, 'client.key') };
}

// ---------------------------------------------------------------------------------------------
// Certificates as identities: the fleet's PKI, its ACL and a broker that enforces both.

/** A PEM certificate and its key (paths). */
export interface CertPair {
  cert: string;
  key: string;
}

/**
 * The controller certificate's CN (its user name at the broker). It contains spaces, so it can
 * never be a device id (protocol DEVICE_ID): a CA that checks device ids before issuing cannot
 * be talked into issuing a device certificate that carries the controller's rights.
 */
export const CONTROLLER_CN = 'edgeq fleet controller';

export interface FleetPki {
  dir: string;
  /** The fleet CA: the broker's cafile and every client's --tls-ca. */
  ca: string;
  /** The broker's certificate: subjectAltName IP:127.0.0.1, DNS:localhost. */
  server: CertPair;
  /** The controller's client certificate, CN = CONTROLLER_CN (or the `controller` option). */
  controller: CertPair & { cn: string };
  /** Per device id, a client certificate with CN = the device id. */
  devices: Record<string, CertPair>;
  /** An unrelated CA and a client certificate it issued, with CN = the first device id (same name, wrong issuer). */
  other: { ca: string; client: CertPair };
  /** Issues another client certificate from the fleet CA (CN = `cn`). */
  issue(cn: string): CertPair;
}

/**
 * A fleet's PKI made with openssl in `dir` (EC P-256 keys, valid two days): the CA, the broker's
 * certificate, a client certificate per device (CN = device id, extendedKeyUsage clientAuth), the
 * controller's, and a second CA with a client certificate of its own.
 */
export function makeFleetPki(dir: string, opts: { devices: string[]; controller?: string }): FleetPki {
  const run = (...args: string[]) => {
    const r = spawnSync('/usr/bin/openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  let n = 0;
  const makeCa = (name: string, cn: string) => {
    run('req', '-x509', ...newKey, '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
    return join(dir, `${name}.pem`);
  };
  const sign = (ca: string, cn: string, ext: string): CertPair => {
    const base = `cert-${++n}`;
    writeFileSync(join(dir, `${base}.ext`), ext);
    run('req', ...newKey, '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${cn}`);
    run('x509', '-req', '-in', `${base}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-set_serial', `0x${randomBytes(8).toString('hex')}`,
      '-out', `${base}.pem`, '-days', '2', '-extfile', `${base}.ext`);
    return { cert: join(dir, `${base}.pem`), key: join(dir, `${base}.key`) };
  };
  const clientExt = 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n';
  const ca = makeCa('ca', 'edgeq test fleet CA');
  const server = sign('ca', '127.0.0.1', 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n');
  const controllerCn = opts.controller ?? CONTROLLER_CN;
  const controller = { ...sign('ca', controllerCn, clientExt), cn: controllerCn };
  const devices: Record<string, CertPair> = {};
  for (const id of opts.devices) devices[id] = sign('ca', id, clientExt);
  const otherCa = makeCa('other-ca', 'edgeq test unrelated CA');
  const otherClient = sign('other-ca', opts.devices[0] ?? 'somebody', clientExt);
  return { dir, ca, server, controller, devices, other: { ca: otherCa, client: otherClient }, issue: (cn) => sign('ca', cn, clientExt) };
}

/**
 * The broker ACL for a fleet (mosquitto acl_file syntax), one place for the tests and for
 * docs/mqtt-security.md. With use_identity_as_username a client's user name is its certificate's
 * CN, so `%u` is the device id: each device may publish only its own status, reply and report and
 * read only its own cmd and status; the controller reads every device's status, reply and report
 * (also through $share/<group>/… shared subscriptions: mosquitto checks the delivered topic) and
 * writes every device's cmd. Anything not granted is refused: a PUBLISH gets PUBACK 135 (not
 * authorized); a message the client may not read is not delivered to it.
 */
export function edgeqAcl(o: { prefix?: string; controller?: string } = {}): string {
  const p = o.prefix ?? 'edgeq/v1';
  return [
    '# edgeq: which topics each client may use (mosquitto acl_file).',
    '# With use_identity_as_username the user name is the client certificate\'s CN:',
    '# a device\'s CN is its device id, so %u below is the device id.',
    '',
    '# Every device: its own topics, nothing else.',
    `pattern write ${p}/%u/status`,
    `pattern write ${p}/%u/reply`,
    `pattern write ${p}/%u/report`,
    `pattern read ${p}/%u/cmd`,
    `pattern read ${p}/%u/status`,
    '',
    '# The fleet controller (edgeq fleet): every device\'s status, replies and reports,',
    '# also through $share/<group>/... (watch --share), and commands to every device.',
    `user ${o.controller ?? CONTROLLER_CN}`,
    `topic read ${p}/+/status`,
    `topic read ${p}/+/reply`,
    `topic read ${p}/+/report`,
    `topic write ${p}/+/cmd`,
    '',
  ].join('\n');
}

/** A private mosquitto that takes identities from certificates and enforces the fleet ACL for `prefix`. */
export function startFleetBroker(t: ExecutionContext, pki: FleetPki, prefix: string): Promise<Broker> {
  return startMosquitto(t, {
    tls: { ca: pki.ca, cert: pki.server.cert, key: pki.server.key, requireCertificate: true, useIdentityAsUsername: true },
    acl: edgeqAcl({ prefix, controller: pki.controller.cn }),
  });
}
