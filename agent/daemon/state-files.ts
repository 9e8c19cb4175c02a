/**
 * Small files the daemon keeps in the state directory: the lock that keeps a second daemon off
 * the same state (two would fight over the MQTT client id and the job queue), and the status
 * sequence number that orders births and wills.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { EdgeqError, fsError } from '../../quant/errors.js';
import { ownerAlive, processToken } from '../store/process.js';

export const LOCK_FILE = 'edgeq-run.lock';
export const SEQ_FILE = 'status-seq';

export interface Lock {
  path: string;
  release(): void;
}

/** Takes the daemon lock of `stateDir`, or throws E_ALREADY_RUNNING naming the holder. A lock whose process is gone is taken over. */
export function takeLock(stateDir: string): Lock {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const path = join(stateDir, LOCK_FILE);
  const mine = JSON.stringify({ pid: process.pid, token: processToken() });
  for (let tries = 0; tries < 3; tries++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(e, path, true);
      let holder: { pid?: unknown; token?: unknown } = {};
      try {
        holder = JSON.parse(readFileSync(path, 'utf8')) as typeof holder;
      } catch {
        // unreadable or half-written: treated as stale
      }
      const pid = typeof holder.pid === 'number' ? holder.pid : null;
      if (pid !== null && pid !== process.pid && ownerAlive(pid, typeof holder.token === 'string' ? holder.token : null)) {
        throw new EdgeqError('E_ALREADY_RUNNING', `another edgeq daemon (pid ${pid}) is running on ${stateDir}; stop it first, or give this one another --state-dir`);
      }
      try {
        unlinkSync(path);
      } catch {
        // someone else removed it first
      }
      continue;
    }
    try {
      writeSync(fd, mine);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return {
      path,
      release() {
        try {
          if (readFileSync(path, 'utf8') === mine) unlinkSync(path);
        } catch {
          // already gone
        }
      },
    };
  }
  throw new EdgeqError('E_ALREADY_RUNNING', `cannot take the lock ${path}: it keeps coming back`);
}

/** The last status sequence number used (0 when none). */
export function readSeq(stateDir: string): number {
  try {
    const n = Number(readFileSync(join(stateDir, SEQ_FILE), 'utf8').trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  }
}

/** Takes the next sequence number, synced to disk before it is used, so it never repeats. */
export function nextSeq(stateDir: string): number {
  const seq = readSeq(stateDir) + 1;
  const path = join(stateDir, SEQ_FILE);
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, `${seq}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    throw fsError(e, path, true);
  }
  return seq;
}
