/**
 * `edgeq run` against mosquitto (the shared one on 127.0.0.1:1883), driven by a plain mqtt.js client
 * acting as the fleet: birth and will, commands and their replies, jobs with progress and
 * reports, idempotency, rejections, the queue bound, cancel, MQTT 5 request/response, SIGTERM
 * and SIGKILL.
 */
import { createServer } from 'node:http';
import { copyFileSync, createReadStream, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseReply, parseStatus, TERMINAL } from '../../agent/protocol/messages.js';
import { parseReport } from '../../agent/protocol/report.js';
import { storeFile } from '../../agent/state.js';
import { Store } from '../../agent/store/index.js';
import { body, device, prepare, replyTo, spawnDaemon, uniqueId, watch, type Device, type Observer } from '../helpers/daemon.js';
import { tempDir } from '../helpers/fixtures.js';
import { anyBroker, serviceTest } from '../helpers/mosquitto.js';

// The shared broker on 1883 where one runs, else a private mosquitto per test.
const { missing, url: brokerUrl } = await anyBroker();

/** Sends a command and waits for its first reply in one of `states` (all replies if none given). */
async function command(o: Observer, d: Device, cmd: Record<string, unknown>, ...states: string[]): Promise<Record<string, unknown>> {
  const from = o.messages.length;
  await o.publish(d.cmd, JSON.stringify(cmd));
  return body(await o.waitFor(replyTo(d, cmd.id as string, ...states), `a ${states.join('/') || 'reply'} reply to ${String(cmd.id)}`, from));
}

function terminal(d: Device, cmdId: string) {
  return replyTo(d, cmdId, ...TERMINAL);
}

serviceTest('birth, status and detect, rejections that leave the daemon answering, MQTT 5 response topic, SIGTERM', missing, async (t) => {
  const URL_ = await brokerUrl(t);
  const d = device();
  const o = await watch(t, URL_, d);
  const p = await prepare(t, URL_, d, {}, 0);
  const daemon = spawnDaemon(t, p.config);

  const birth = body(await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth'));
  const parsed = parseStatus(JSON.stringify(birth));
  t.true(parsed.ok, parsed.ok ? '' : parsed.error);
  t.is(birth.deviceId, d.id);
  t.is(typeof birth.seq, 'number');
  t.true((birth.seq as number) >= 1);
  t.truthy((birth.device as { arch: string }).arch);
  t.truthy((birth.profile as { name: string }).name);
  // Retained: a subscriber that comes later gets it.
  const early = await watch(t, URL_, d);
  const retainedBirth = await early.waitFor((m) => m.topic === d.status, 'the retained birth');
  t.true(retainedBirth.packet.retain);
  t.is(body(retainedBirth).seq, birth.seq);

  // status and detect
  const status = await command(o, d, { id: 's1', type: 'status' });
  t.is(status.state, 'succeeded');
  t.true(parseReply(JSON.stringify(status)).ok);
  t.is((status.result as { online: boolean }).online, true);
  t.is((status.result as { queue: number }).queue, 0);
  // The live reply carries the process's figures; the retained birth does not (they would go stale).
  const proc = (status.result as { process: { uptimeS: number; rssBytes: number; heapUsedBytes: number; mallocTuned: boolean } }).process;
  t.true(proc.rssBytes > proc.heapUsedBytes && proc.heapUsedBytes > 0, JSON.stringify(proc));
  t.true(proc.uptimeS >= 0);
  t.is(typeof proc.mallocTuned, 'boolean');
  t.is(birth.process, undefined);
  const detect = await command(o, d, { id: 'd1', type: 'detect', args: {} });
  t.is(detect.state, 'succeeded');
  t.truthy((detect.result as { profile: { name: string } }).profile.name);

  // Rejections: each gets `rejected` with a code, and the daemon keeps going.
  const from = o.messages.length;
  await o.publish(d.cmd, 'not json at all');
  const bad = body(await o.waitFor((m) => m.topic === d.reply && m.json?.state === 'rejected' && (m.json.error as { code: string }).code === 'E_BAD_JSON', 'a rejection of malformed JSON', from));
  t.is(bad.cmdId, 'unknown');
  // Truncated JSON whose id is readable: the rejection names it.
  await o.publish(d.cmd, '{"id": "m1", "type": ');
  const truncated = body(await o.waitFor(replyTo(d, 'm1', 'rejected'), 'a rejection of truncated JSON', from));
  t.is((truncated.error as { code: string }).code, 'E_BAD_JSON');
  const wrong = await command(o, d, { id: 'w1', type: 'optimize', args: { model: 'fmnist', runs: 'five' } });
  t.is(wrong.state, 'rejected');
  t.is((wrong.error as { code: string }).code, 'E_COMMAND_INVALID');
  t.regex((wrong.error as { message: string }).message, /runs/);
  const unknown = await command(o, d, { id: 'u1', type: 'reboot' });
  t.is(unknown.state, 'rejected');
  t.is((unknown.error as { code: string }).code, 'E_COMMAND_UNKNOWN');
  const extraKey = await command(o, d, { id: 'x1', type: 'status', args: {}, sudo: true });
  t.is((extraKey.error as { code: string }).code, 'E_COMMAND_INVALID');
  const big = await command(o, d, { id: 'big1', type: 'status', args: {}, pad: 'x'.repeat(1024 * 1024) });
  t.is(big.state, 'rejected');
  t.is((big.error as { code: string }).code, 'E_PAYLOAD_TOO_LARGE');
  const notAllowed = await command(o, d, { id: 'i1', type: 'import', args: { model: 'fmnist', source: '/etc/passwd' } });
  t.is(notAllowed.state, 'rejected');
  t.is((notAllowed.error as { code: string }).code, 'E_IMPORT_NOT_ALLOWED');
  // A job for a model that does not exist is accepted, then fails with the store's code.
  const noModel = await command(o, d, { id: 'n1', type: 'bench', args: { model: 'nope' } }, ...TERMINAL);
  t.is(noModel.state, 'failed');
  t.is((noModel.error as { code: string }).code, 'E_MODEL_UNKNOWN');
  const after = await command(o, d, { id: 's2', type: 'status' });
  t.is(after.state, 'succeeded');

  // MQTT 5 request/response: replies also go to the response topic, with the correlation data.
  const responses = `${uniqueId('edgeq-test-responses')}/r`;
  await o.subscribe(responses);
  const corr = Buffer.from([0, 1, 2, 250]);
  const fromR = o.messages.length;
  await o.publish(d.cmd, JSON.stringify({ id: 'rt1', type: 'status' }), { properties: { responseTopic: responses, correlationData: corr } });
  const viaResponse = await o.waitFor((m) => m.topic === responses, 'a reply on the response topic', fromR);
  t.is(body(viaResponse).cmdId, 'rt1');
  t.is(body(viaResponse).state, 'succeeded');
  t.deepEqual(Buffer.from(viaResponse.packet.properties?.correlationData ?? []), corr);
  await o.waitFor(replyTo(d, 'rt1'), 'the same reply on the reply topic', fromR);

  // SIGTERM: exit 0, retained status offline with the birth's seq.
  const fromS = o.messages.length;
  daemon.child.kill('SIGTERM');
  t.deepEqual(await daemon.exited, { code: 0, signal: null });
  const offline = await o.waitFor((m) => m.topic === d.status && m.json?.online === false, 'the offline status', fromS);
  t.is(body(offline).seq, birth.seq);
  t.true(parseStatus(offline.text).ok);
  // Retained: a new subscriber sees it.
  const late = await watch(t, URL_, d);
  const retained = await late.waitFor((m) => m.topic === d.status, 'the retained status');
  t.is(body(retained).online, false);
  t.true(retained.packet.retain);
});

serviceTest('optimize: accepted → running with progress → succeeded, one report; a repeated id is answered, not redone', missing, async (t) => {
  const URL_ = await brokerUrl(t);
  const d = device();
  const o = await watch(t, URL_, d);
  const p = await prepare(t, URL_, d);
  spawnDaemon(t, p.config);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');

  const cmd = JSON.stringify({ id: 'opt-1', type: 'optimize', args: { model: 'fmnist', runs: 5, calibCount: 64 } });
  await o.publish(d.cmd, cmd);
  // The same id again at once: answered with where the job is, not queued twice.
  await o.publish(d.cmd, cmd);
  const done = body(await o.waitFor(terminal(d, 'opt-1'), 'the optimize result'));
  t.is(done.state, 'succeeded', JSON.stringify(done.error));
  const replies = o.all(d.reply, (j) => j.cmdId === 'opt-1');
  const states = replies.map((m) => m.json!.state as string);
  t.is(states[0], 'accepted');
  t.true(states.includes('running'));
  t.is(states.filter((s) => s === 'accepted').length, 1, states.join(' '));
  t.is(states.filter((s) => TERMINAL.has(s as never)).length, 1);
  for (const r of replies) t.true(parseReply(r.text).ok, r.text);
  const progress = replies.filter((m) => m.json!.state === 'running' && typeof m.json!.progress === 'number').map((m) => m.json!.progress as number);
  t.true(progress.length >= 2, `progress ${progress.join(', ')}`);
  t.true(progress.every((x) => x >= 0 && x <= 1));
  t.true(progress.some((x) => x > 0));
  // Every running reply comes after the accepted one and before the end.
  t.is(states.lastIndexOf('accepted'), 0);
  t.is(states.indexOf('succeeded'), states.length - 1);

  const result = done.result as { runId: string; int8Version: number; reportId: string; summary: { speedup: number } };
  t.is(result.int8Version, 2);
  t.true(result.summary.speedup > 0);
  const reports = o.all(d.report);
  t.is(reports.length, 1);
  const report = parseReport(reports[0].json);
  t.true(report.ok, report.ok ? '' : report.error);
  t.is(report.ok && report.value.id, result.reportId);
  t.is(report.ok && report.value.device.id, d.id);

  // After it ended, the same id gets the same final reply again, byte for byte; nothing reruns.
  const from = o.messages.length;
  await o.publish(d.cmd, cmd);
  const again = await o.waitFor(terminal(d, 'opt-1'), 'the repeated final reply', from);
  const finals = o.all(d.reply, (j) => j.cmdId === 'opt-1' && TERMINAL.has(j.state as never));
  t.is(finals.length, 2);
  t.is(again.text, finals[0].text);
  // A status round trip: everything the daemon sent before it has arrived.
  await command(o, d, { id: 'barrier', type: 'status' });
  t.is(o.all(d.report).length, 1);
  const store = Store.open(storeFile(p.stateDir));
  try {
    t.is(store.listRuns({ kind: 'optimize' }).length, 1);
    t.is(store.listVersions('fmnist').length, 2);
  } finally {
    store.close();
  }
});

serviceTest('queue bound, cancel of a queued and of a running job, message expiry of a queued job', missing, async (t) => {
  const URL_ = await brokerUrl(t);
  const d = device();
  const o = await watch(t, URL_, d);
  const p = await prepare(t, URL_, d, { queue: { max: 1 } });
  spawnDaemon(t, p.config);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');

  const long = (id: string) => JSON.stringify({ id, type: 'optimize', args: { model: 'fmnist', runs: 3000 } });
  const from = o.messages.length;
  await o.publish(d.cmd, long('A'));
  await o.publish(d.cmd, long('B'));
  await o.publish(d.cmd, long('C'));
  const a = body(await o.waitFor(replyTo(d, 'A', 'accepted'), 'A accepted', from));
  const b = body(await o.waitFor(replyTo(d, 'B', 'accepted'), 'B accepted', from));
  const c = body(await o.waitFor(replyTo(d, 'C'), 'C answered', from));
  t.deepEqual(a.result, { position: 0 });
  t.deepEqual(b.result, { position: 1 });
  t.is(c.state, 'rejected');
  t.is((c.error as { code: string }).code, 'E_QUEUE_FULL');

  // B waits: cancelled at once.
  const cb = await command(o, d, { id: 'cancel-B', type: 'cancel', args: { cmdId: 'B' } });
  t.is(cb.state, 'succeeded');
  t.like(cb.result as object, { cmdId: 'B', was: 'queued' });
  const bEnd = body(await o.waitFor(terminal(d, 'B'), 'B cancelled'));
  t.is(bEnd.state, 'cancelled');
  t.is((bEnd.error as { code: string }).code, 'E_CANCELLED');

  // A runs: cancelled at its next progress point.
  await o.waitFor(replyTo(d, 'A', 'running'), 'A running');
  const ca = await command(o, d, { id: 'cancel-A', type: 'cancel', args: { cmdId: 'A' } });
  t.is(ca.state, 'succeeded');
  t.like(ca.result as object, { cmdId: 'A', was: 'running' });
  const aEnd = body(await o.waitFor(terminal(d, 'A'), 'A ended'));
  t.is(aEnd.state, 'cancelled');

  // Nothing left to cancel.
  const none = await command(o, d, { id: 'cancel-A2', type: 'cancel', args: { cmdId: 'A' } });
  t.is(none.state, 'failed');
  t.is((none.error as { code: string }).code, 'E_JOB_UNKNOWN');
  t.is(o.all(d.report).length, 0);
  const store = Store.open(storeFile(p.stateDir));
  try {
    const runs = store.listRuns({ kind: 'optimize' });
    t.is(runs.length, 1);
    t.not(runs[0].state, 'succeeded');
  } finally {
    store.close();
  }

  // A queued job whose command carried a message expiry that passes before it can start is not run.
  const fromE = o.messages.length;
  // A2 runs longer than E's expiry whatever the machine (10000 timed runs per model).
  await o.publish(d.cmd, JSON.stringify({ id: 'A2', type: 'optimize', args: { model: 'fmnist', runs: 10_000 } }));
  await o.publish(d.cmd, JSON.stringify({ id: 'E', type: 'bench', args: { model: 'fmnist', runs: 5 } }), { properties: { messageExpiryInterval: 1 } });
  await o.waitFor(replyTo(d, 'E', 'accepted'), 'E accepted', fromE);
  await new Promise((r) => setTimeout(r, 1500)); // past E's expiry
  await command(o, d, { id: 'cancel-A2', type: 'cancel', args: { cmdId: 'A2' } });
  const e = body(await o.waitFor(terminal(d, 'E'), 'E answered', fromE));
  t.is(e.state, 'failed');
  t.is((e.error as { code: string }).code, 'E_EXPIRED');
});

serviceTest('capture, config, import (file and URL), quantize, eval and bench commands', missing, async (t) => {
  const URL_ = await brokerUrl(t);
  const d = device();
  const o = await watch(t, URL_, d);
  const server = createServer((req, res) => {
    const file = req.url === '/data/x.npy' ? 'x.npy' : req.url === '/data/y.npy' ? 'y.npy' : undefined;
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    createReadStream(join(p.dir, file)).pipe(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const port = (server.address() as { port: number }).port;
  const imports = join(tempDir(t, 'edgeq-imports-'), 'in');
  const p = await prepare(t, URL_, d, { import: { allow: [imports, `http://127.0.0.1:${port}/data/`] } }, 100);
  mkdirSync(imports, { recursive: true });
  spawnDaemon(t, p.config);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');

  // capture
  const stats = await command(o, d, { id: 'cap-1', type: 'capture', args: { model: 'fmnist', action: 'stats' } });
  t.is(stats.state, 'succeeded');
  t.is((stats.result as { stats: { kept: number } }).stats.kept, 100);
  const set = await command(o, d, { id: 'cap-2', type: 'capture', args: { model: 'fmnist', action: 'stop', rate: 0.5 } });
  t.like((set.result as { policy: object }).policy, { enabled: false, rate: 0.5 });
  const noModel = await command(o, d, { id: 'cap-3', type: 'capture', args: { model: 'nope', action: 'start' } });
  t.is(noModel.state, 'failed');
  t.is((noModel.error as { code: string }).code, 'E_MODEL_UNKNOWN');

  // config: allowed keys only, persisted
  const cfg = await command(o, d, { id: 'cfg-1', type: 'config', args: { set: { 'quantize.method': 'minmax', threads: 1 } } });
  t.is(cfg.state, 'succeeded');
  t.like((cfg.result as { effective: object }).effective, { 'quantize.method': 'minmax', threads: 1 });
  t.deepEqual(JSON.parse(readFileSync(join(p.stateDir, 'config-overrides.json'), 'utf8')), { 'quantize.method': 'minmax', threads: 1 });
  const cfgBad = await command(o, d, { id: 'cfg-2', type: 'config', args: { set: { 'broker.url': 'mqtt://evil' } } });
  t.is(cfgBad.state, 'rejected');
  t.is((cfgBad.error as { code: string }).code, 'E_COMMAND_INVALID');

  // import: a file under an allowed directory, then the same over HTTP (all duplicates)
  copyFileSync(join(p.dir, 'x.npy'), join(imports, 'x.npy'));
  copyFileSync(join(p.dir, 'y.npy'), join(imports, 'y.npy'));
  // The first 100 samples are in the store already; import 100 more from the test set.
  const imp = await command(o, d, { id: 'imp-1', type: 'import', args: { model: 'fmnist', source: join(imports, 'x.npy'), labels: join(imports, 'y.npy') } }, ...TERMINAL);
  t.is(imp.state, 'succeeded', JSON.stringify(imp.error));
  t.like(imp.result as object, { offered: 100 });
  t.is((imp.result as { outcomes: { duplicate: number } }).outcomes.duplicate, 100);
  const escape = await command(o, d, { id: 'imp-2', type: 'import', args: { model: 'fmnist', source: `${imports}/../../x.npy` } });
  t.is(escape.state, 'rejected');
  t.is((escape.error as { code: string }).code, 'E_IMPORT_NOT_ALLOWED');
  const viaUrl = await command(o, d, { id: 'imp-3', type: 'import', args: { model: 'fmnist', source: `http://127.0.0.1:${port}/data/x.npy`, labels: `http://127.0.0.1:${port}/data/y.npy` } }, ...TERMINAL);
  t.is(viaUrl.state, 'succeeded', JSON.stringify(viaUrl.error));
  t.like(viaUrl.result as object, { offered: 100 });
  const missingUrl = await command(o, d, { id: 'imp-4', type: 'import', args: { model: 'fmnist', source: `http://127.0.0.1:${port}/data/none.npy` } }, ...TERMINAL);
  t.is(missingUrl.state, 'failed');
  t.is((missingUrl.error as { code: string }).code, 'E_DOWNLOAD');

  // quantize (uses the method the config command set), eval of the int8 version, bench
  const q = await command(o, d, { id: 'q-1', type: 'quantize', args: { model: 'fmnist', calibCount: 32 } }, ...TERMINAL);
  t.is(q.state, 'succeeded', JSON.stringify(q.error));
  t.like(q.result as object, { int8Version: 2, method: 'minmax' });
  const ev = await command(o, d, { id: 'e-1', type: 'eval', args: { model: 'fmnist', version: 2 } }, ...TERMINAL);
  t.is(ev.state, 'succeeded', JSON.stringify(ev.error));
  t.like(ev.result as object, { version: 2, kind: 'int8', referenceVersion: 1 });
  t.true((ev.result as { agreement: number }).agreement > 0.5);
  const bench = await command(o, d, { id: 'b-1', type: 'bench', args: { model: 'fmnist', runs: 5 } }, ...TERMINAL);
  t.is(bench.state, 'succeeded', JSON.stringify(bench.error));
  t.true((bench.result as { p50Ms: number }).p50Ms > 0);
  t.is((bench.result as { version: number }).version, 1);
  t.is(o.all(d.report).length, 0, 'only optimize sends a report');
});

serviceTest('SIGKILL mid-run: the will marks the device offline; the restart reports the job interrupted and comes back with a higher seq', missing, async (t) => {
  const URL_ = await brokerUrl(t);
  const d = device();
  const o = await watch(t, URL_, d);
  const p = await prepare(t, URL_, d);
  const first = spawnDaemon(t, p.config);
  const birth1 = body(await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the first birth'));

  const from = o.messages.length;
  await o.publish(d.cmd, JSON.stringify({ id: 'k1', type: 'optimize', args: { model: 'fmnist', runs: 3000 } }));
  await o.waitFor(replyTo(d, 'k1', 'running'), 'k1 running', from);
  first.child.kill('SIGKILL');
  await first.exited;
  const will = body(await o.waitFor((m) => m.topic === d.status && m.json?.online === false, 'the will', from));
  t.is(will.seq, birth1.seq, 'the will carries the seq of the birth it belongs to');
  t.true(parseStatus(JSON.stringify(will)).ok);

  const fromRestart = o.messages.length;
  spawnDaemon(t, p.config);
  const interrupted = body(await o.waitFor(terminal(d, 'k1'), 'the interrupted reply', fromRestart));
  t.is(interrupted.state, 'failed');
  t.is((interrupted.error as { code: string }).code, 'E_INTERRUPTED');
  const birth2 = body(await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the second birth', fromRestart));
  t.true((birth2.seq as number) > (will.seq as number), `birth ${String(birth2.seq)} after will ${String(will.seq)}`);
  // The device answers again, and the store says the run was interrupted.
  t.is((await command(o, d, { id: 'after-kill', type: 'status' })).state, 'succeeded');
  const runId = (interrupted.result as { runId: string }).runId;
  const store = Store.open(storeFile(p.stateDir));
  try {
    t.is(store.getRun(runId)?.state, 'interrupted');
    t.is(store.countJobs(), 0);
  } finally {
    store.close();
  }
  // The same id again: the recorded answer, not a new run.
  const again = await command(o, d, { id: 'k1', type: 'optimize', args: { model: 'fmnist', runs: 3000 } });
  t.is(again.state, 'failed');
  t.is((again.error as { code: string }).code, 'E_INTERRUPTED');
});

serviceTest('SIGTERM mid-run: exit 0, the job goes back to the queue and runs at the next start', missing, async (t) => {
  const URL_ = await brokerUrl(t);
  const d = device();
  const o = await watch(t, URL_, d);
  const p = await prepare(t, URL_, d, { shutdownTimeoutMs: 5000 });
  const first = spawnDaemon(t, p.config);
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');
  const from = o.messages.length;
  await o.publish(d.cmd, JSON.stringify({ id: 'g1', type: 'optimize', args: { model: 'fmnist', runs: 5 } }));
  await o.waitFor(replyTo(d, 'g1', 'running'), 'g1 running', from);
  first.child.kill('SIGTERM');
  t.deepEqual(await first.exited, { code: 0, signal: null });
  t.truthy(first.logs.find((l) => l.event === 'job-requeued'), first.stderr());
  await o.waitFor((m) => m.topic === d.status && m.json?.online === false, 'the offline status', from);
  t.false(o.all(d.reply).some((m) => m.json!.cmdId === 'g1' && TERMINAL.has(m.json!.state as never)), 'no final reply: the job is not over');

  const fromRestart = o.messages.length;
  spawnDaemon(t, p.config, ['--no-endpoint']);
  const end = body(await o.waitFor(terminal(d, 'g1'), 'g1 finished after the restart', fromRestart));
  t.is(end.state, 'succeeded', JSON.stringify(end.error));
  t.is(o.all(d.report).length, 1);
  t.is(o.all(d.reply).filter((m) => m.json!.cmdId === 'g1' && m.json!.state === 'accepted').length, 1);
});
