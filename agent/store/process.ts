/**
 * Is the process that owns a run still alive? A pid alone is not enough: pids are reused
 * (after a reboot the daemon often gets the same one), so on Linux a run also records its
 * owner's boot id and start time, and a live pid with another start time is another process.
 * Zombies (killed, not yet reaped) count as dead.
 */
import { readFileSync } from 'node:fs';

let bootId: string | null | undefined;

function readBootId(): string | null {
  if (bootId === undefined) {
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      bootId = null;
    }
  }
  return bootId;
}

/** `boot id:start time` of a live process on Linux, 'zombie' for a dead unreaped one, null where /proc cannot tell. */
function procStat(pid: number): string | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // Fields after the command name, which is in parentheses and may itself contain spaces or ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  if (state === 'Z' || state === 'X' || state === 'x') return 'zombie';
  const start = rest[19]; // field 22 of stat(5): starttime, counted from field 3
  const boot = readBootId();
  return start === undefined || boot === null ? null : `${boot}:${start}`;
}

let ownToken: string | null | undefined;

/** The token recorded for this process as a run's owner (null off Linux). */
export function processToken(): string | null {
  if (ownToken === undefined) {
    const t = procStat(process.pid);
    ownToken = t === 'zombie' ? null : t;
  }
  return ownToken;
}

/** True when `pid` is a live process and, if `token` was recorded, still the same process. */
export function ownerAlive(pid: number | null, token: string | null): boolean {
  if (pid === null || !Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    // EPERM: it exists but belongs to another user.
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const now = procStat(pid);
  if (now === 'zombie') return false;
  if (token !== null && now !== null && now !== token) return false;
  return true;
}
