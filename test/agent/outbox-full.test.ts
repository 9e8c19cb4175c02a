/**
 * The outbox cap on a running daemon: a private mosquitto whose ACL refuses the device's
 * replies (PUBACK 135), so final replies stay in the outbox; at outbox.maxMessages of them every
 * new command — an immediate one, a job, a repeat — is rejected with E_OUTBOX_FULL and nothing
 * runs; once the ACL lets replies through again, the same command id sent again runs.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { storeFile } from '../../agent/state.js';
import { body, device, prepare, replyTo, spawnDaemon, watch, type Device } from '../helpers/daemon.js';
import { mosquittoMissing, serviceTest, startMosquitto } from '../helpers/mosquitto.js';

/** Anonymous clients (the daemon and the test's fleet client) on `d`'s prefix; replies and reports writable only when `replies`. */
function acl(d: Device, replies: boolean): string {
  const p = d.prefix;
  return [
    `topic readwrite ${p}/+/status`,
    `topic readwrite ${p}/+/cmd`,
    `topic ${replies ? 'readwrite' : 'read'} ${p}/+/reply`,
    `topic ${replies ? 'readwrite' : 'read'} ${p}/+/report`,
    '',
  ].join('\n');
}

serviceTest('outbox full of final replies: every new command is rejected with E_OUTBOX_FULL, nothing runs, and the outbox stays at its cap; the same id runs once replies go through', mosquittoMissing(), async (t) => {
  const d = device();
  const broker = await startMosquitto(t, { acl: acl(d, false) });
  const o = await watch(t, broker.url, d);
  const p = await prepare(t, broker.url, d, { outbox: { maxMessages: 2 } });
  const daemon = spawnDaemon(t, p.config);
  // The birth comes after the command subscription.
  await o.waitFor((m) => m.topic === d.status && m.json?.online === true, 'the birth');

  // Two answered commands fill the outbox: their replies are refused by the broker, so they stay.
  // The broker refuses each of them 5 times, 2 s apart, before the daemon gives up on it, so
  // everything below arrives while both are still there.
  const burst = [
    { id: 'fill-1', type: 'status' },
    { id: 'fill-2', type: 'detect', args: {} },
    { id: 'over-status', type: 'status' },
    { id: 'over-job', type: 'optimize', args: { model: 'fmnist', runs: 5 } },
    { id: 'fill-1', type: 'status' }, // a repeat would resend its stored final reply
  ];
  for (const c of burst) await o.publish(d.cmd, JSON.stringify(c));
  // Each command is answered or rejected in the same turn as its `command` log line.
  for (let waited = 0; daemon.logs.filter((l) => l.event === 'command').length < burst.length; waited += 50) {
    if (waited > 60_000) t.fail(`the daemon logged ${daemon.logs.filter((l) => l.event === 'command').length} of ${burst.length} commands`);
    if (waited > 60_000) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const r = daemon.logs.filter((l) => l.event === 'command-rejected');
  t.deepEqual(r.map((l) => [l.cmdId, l.code]), [['over-status', 'E_OUTBOX_FULL'], ['over-job', 'E_OUTBOX_FULL'], ['fill-1', 'E_OUTBOX_FULL']]);
  t.regex(String(r[0].message), /outbox cap .*outbox\.maxMessages/);
  t.false(daemon.logs.some((l) => l.event === 'job-started'), 'no job ran');
  // The rejections were trimmed as they came: the outbox holds the two final replies, its cap.
  const db = new BetterSqlite3(storeFile(p.stateDir), { readonly: true });
  try {
    t.is((db.prepare('SELECT count(*) AS n FROM outbox').get() as { n: number }).n, 2);
  } finally {
    db.close();
  }
  t.like(await daemon.waitLog('outbox-publish-refused'), { reasonCode: 135 }, 'the broker refused the replies');
  t.is(o.all(d.reply).length, 0, 'the broker delivered no reply');

  // Replies allowed again: the job's id, sent again, is taken (a rejection was not recorded).
  writeFileSync(join(broker.dir, 'acl'), acl(d, true));
  broker.reload();
  // Until the reload is in effect, a resend may still meet the full outbox; send until accepted.
  let accepted: Record<string, unknown> | undefined;
  for (let i = 0; i < 60 && !accepted; i++) {
    const from = o.messages.length;
    await o.publish(d.cmd, JSON.stringify(burst[3]));
    accepted = await o.waitFor(replyTo(d, 'over-job', 'accepted', 'queued', 'running'), 'over-job taken', from, 1000).then(body, () => undefined);
  }
  t.truthy(accepted, 'the resent job was taken once the broker took replies');
  const stopped = daemon.exited;
  daemon.child.kill('SIGTERM');
  t.is((await stopped).code, 0);
});
