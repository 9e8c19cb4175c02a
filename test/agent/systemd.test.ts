/**
 * The systemd integration: the unit file passes `systemd-analyze verify` and an offline
 * security exposure of 2.0 or lower; `edgeq run` under a fake NOTIFY_SOCKET (a Unix datagram
 * socket a small Python listener binds) sends READY=1 after start-up, WATCHDOG=1 pings from its
 * health check, and STOPPING=1 on SIGTERM; the watchdog skips pings while unhealthy; nothing is
 * sent where NOTIFY_SOCKET is unset.
 *
 * Needs python3 (the datagram listener: Node has no AF_UNIX datagram sockets), systemd-notify
 * and systemd-analyze; without them the tests skip with the reason in their title. No broker:
 * the daemon's first connection attempt goes to a closed port.
 */
import test from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SystemdNotifier } from '../../agent/daemon/notify.js';
import { device, prepare, spawnDaemon } from '../helpers/daemon.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { freePort, serviceTest } from '../helpers/mosquitto.js';

function found(cmd: string, args: string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore', timeout: 20_000 });
  return r.error === undefined && r.status === 0;
}

const PYTHON = ['/usr/bin/python3', 'python3'].find((p) => found(p, ['-c', 'import socket; socket.AF_UNIX']));
const NOTIFY_BIN = process.env.EDGEQ_SYSTEMD_NOTIFY ?? 'systemd-notify';
const hasNotify = found('sh', ['-c', `command -v ${NOTIFY_BIN}`]);
const hasAnalyze = found('systemd-analyze', ['--version']);
const notifyMissing = !PYTHON ? 'no python3 for the fake NOTIFY_SOCKET listener' : !hasNotify ? `no ${NOTIFY_BIN} binary (Debian: apt-get install systemd)` : undefined;
const UNIT = join(ROOT, 'systemd/edgeq.service');

/** Binds a Unix datagram socket and prints every datagram received as a JSON string on one line. */
const LISTENER = `
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(json.dumps("LISTENING"), flush=True)
while True:
    print(json.dumps(s.recv(65536).decode("utf-8", "replace")), flush=True)
`;

interface Listener {
  socket: string;
  /** Every datagram, one string each (newline-separated VAR=VALUE lines). */
  datagrams: string[];
  waitFor(pred: (d: string) => boolean, what: string, timeoutMs?: number): Promise<string>;
}

async function listen(t: import('ava').ExecutionContext, dir: string): Promise<Listener> {
  const socket = join(dir, 'notify.sock');
  const child: ChildProcess = spawn(PYTHON!, ['-c', LISTENER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const datagrams: string[] = [];
  const listeners = new Set<() => void>();
  let pending = '';
  let listening!: () => void;
  const up = new Promise<void>((resolve) => (listening = resolve));
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (chunk: string) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const d = JSON.parse(pending.slice(0, nl)) as string;
      pending = pending.slice(nl + 1);
      if (d === 'LISTENING') listening();
      else datagrams.push(d);
    }
    for (const l of [...listeners]) l();
  });
  await up;
  return {
    socket,
    datagrams,
    waitFor(pred, what, timeoutMs = 60_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = datagrams.find(pred);
          if (hit === undefined) return;
          cleanup();
          resolve(hit);
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${what}; received: ${JSON.stringify(datagrams)}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
  };
}

const lines = (d: string) => d.split('\n');

// Without systemd-notify, python3 or systemd-analyze these skip with the reason in the title;
// under EDGEQ_REQUIRE_SERVICES=1 (CI) they fail instead, like the broker tests.
const notifyTest = (title: string, fn: import('ava').ImplementationFn<[]>) => serviceTest(title, notifyMissing, fn);
const analyzeTest = (title: string, fn: import('ava').ImplementationFn<[]>) => serviceTest(title, hasAnalyze ? undefined : 'no systemd-analyze', fn);

/** The unit with ExecStart on this machine's node (verify checks that the binary exists). */
function localUnit(t: import('ava').ExecutionContext): string {
  const dir = tempDir(t, 'edgeq-unit-');
  const file = join(dir, 'edgeq.service');
  writeFileSync(file, readFileSync(UNIT, 'utf8').replace(/^ExecStart=\/usr\/bin\/node /m, `ExecStart=${process.execPath} `));
  return file;
}

analyzeTest('systemd/edgeq.service passes systemd-analyze verify', (t) => {
  const r = spawnSync('systemd-analyze', ['verify', localUnit(t)], { encoding: 'utf8', timeout: 60_000 });
  t.is(r.status, 0, r.stderr);
  t.is(r.stderr.trim(), '', 'verify prints nothing for a clean unit');
});

analyzeTest('systemd/edgeq.service: offline security exposure is 2.0 or lower, CPU facts and V8 JIT kept', (t) => {
  const r = spawnSync('systemd-analyze', ['security', '--offline=true', localUnit(t)], { encoding: 'utf8', timeout: 60_000 });
  const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(r.stdout);
  t.truthy(m, r.stdout + r.stderr);
  const exposure = Number(m![1]);
  t.log(`exposure ${exposure}`);
  t.true(exposure <= 2.0, `exposure ${exposure}`);
  const unit = readFileSync(UNIT, 'utf8');
  t.regex(unit, /^Type=notify$/m);
  t.regex(unit, /^NotifyAccess=all$/m);
  t.regex(unit, /^WatchdogSec=/m);
  t.regex(unit, /^Restart=on-failure$/m);
  t.regex(unit, /^StartLimitBurst=/m);
  t.regex(unit, /^StateDirectory=edgeq$/m);
  t.regex(unit, /^ConfigurationDirectory=edgeq$/m);
  t.notRegex(unit, /^ProcSubset=pid/m, '/proc/cpuinfo must stay visible');
  t.notRegex(unit, /^(InaccessiblePaths|TemporaryFileSystem)=.*\/(sys|proc)\b/m, '/sys and /proc must stay visible');
  t.notRegex(unit, /^MemoryDenyWriteExecute=(yes|true|1)/m, 'V8 needs writable-executable memory');
});

notifyTest('edgeq run under a fake NOTIFY_SOCKET: READY=1 after start-up, WATCHDOG=1 pings, STOPPING=1 on SIGTERM', async (t) => {
  const url = `mqtt://127.0.0.1:${await freePort()}`; // nothing listens: the first attempt fails, the daemon is ready anyway
  const p = await prepare(t, url, device(), {}, 0);
  const l = await listen(t, p.dir);
  process.env.NOTIFY_SOCKET = l.socket;
  process.env.WATCHDOG_USEC = '600000'; // a ping every 300 ms
  let d;
  try {
    d = spawnDaemon(t, p.config);
  } finally {
    delete process.env.NOTIFY_SOCKET;
    delete process.env.WATCHDOG_USEC;
  }
  const ready = await l.waitFor((x) => lines(x).includes('READY=1'), 'READY=1');
  // READY=1 comes after the store, the endpoint and the first connection attempt.
  const readyLog = d.logs.find((e) => e.event === 'ready');
  t.truthy(readyLog, 'the daemon logged ready before READY=1 arrived');
  t.is(readyLog!.connected, false);
  t.truthy(d.logs.find((e) => e.event === 'endpoint-started'));
  t.true(lines(ready).includes(`MAINPID=${d.child.pid}`), ready);
  t.truthy(lines(ready).find((x) => x.startsWith('STATUS=ready')), ready);
  await l.waitFor(() => l.datagrams.filter((x) => lines(x).includes('WATCHDOG=1')).length >= 3, 'three WATCHDOG=1 pings');
  t.falsy(l.datagrams.find((x) => lines(x).includes('STOPPING=1')));
  d.child.kill('SIGTERM');
  const stopping = await l.waitFor((x) => lines(x).includes('STOPPING=1'), 'STOPPING=1');
  t.truthy(lines(stopping).find((x) => x.startsWith('STATUS=stopping: SIGTERM')), stopping);
  const exit = await d.exited;
  t.is(exit.code, 0, d.stderr().slice(-2000));
  // No pings after STOPPING=1, and no notification failures logged.
  const at = l.datagrams.indexOf(stopping);
  t.deepEqual(l.datagrams.slice(at + 1).filter((x) => lines(x).includes('WATCHDOG=1')), []);
  t.falsy(d.logs.find((e) => e.event === 'notify-failed'), JSON.stringify(d.logs.find((e) => e.event === 'notify-failed')));
});

notifyTest('the watchdog skips pings while the health check fails, and resumes when it passes', async (t) => {
  const dir = tempDir(t, 'edgeq-notify-');
  const l = await listen(t, dir);
  const logs: Array<Record<string, unknown>> = [];
  const n = SystemdNotifier.fromEnv((e) => logs.push(e), { NOTIFY_SOCKET: l.socket, WATCHDOG_USEC: '200000' });
  t.teardown(() => n.close());
  t.is(n.watchdogMs, 100);
  let why: string | undefined = 'SQLite does not answer: test';
  n.startWatchdog(() => Promise.resolve(why));
  await new Promise((r) => setTimeout(r, 800));
  t.deepEqual(l.datagrams, [], 'no ping while unhealthy');
  t.is(logs.filter((e) => e.event === 'watchdog-unhealthy').length, 1, 'logged once per cause');
  why = undefined;
  await l.waitFor((x) => lines(x).includes('WATCHDOG=1'), 'WATCHDOG=1 once healthy', 10_000);
  t.truthy(logs.find((e) => e.event === 'watchdog-healthy'));
  t.falsy(logs.find((e) => e.event === 'notify-failed'));
  await n.close();
});

test('without NOTIFY_SOCKET the notifier does nothing; WATCHDOG_PID of another process turns the watchdog off', async (t) => {
  const logs: Array<Record<string, unknown>> = [];
  const off = SystemdNotifier.fromEnv((e) => logs.push(e), {});
  t.false(off.enabled);
  t.is(off.watchdogMs, undefined);
  await off.ready('ready');
  off.startWatchdog(() => Promise.resolve(undefined));
  await off.stopping('stopping');
  await off.close();
  t.deepEqual(logs, []);
  const other = SystemdNotifier.fromEnv(() => {}, { NOTIFY_SOCKET: '/nonexistent', WATCHDOG_USEC: '1000000', WATCHDOG_PID: String(process.pid + 1) });
  t.true(other.enabled);
  t.is(other.watchdogMs, undefined);
  const mine = SystemdNotifier.fromEnv(() => {}, { NOTIFY_SOCKET: '/nonexistent', WATCHDOG_USEC: '1000000', WATCHDOG_PID: String(process.pid) });
  t.is(mine.watchdogMs, 500);
});
