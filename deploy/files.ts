/**
 * The content-addressed artifact directory: `<sha256>.onnx` files (complete, verified, fsynced),
 * `<sha256>.part` (a download in progress or interrupted: kept so it can resume),
 * `<sha256>.lock` (held by the process fetching that sha256) and `*.<pid>.tmp` (copies in flight).
 * A file appears under its final name only by rename(2) after fsync, and the directory is fsynced
 * after, so after a crash a final name always holds the whole verified file.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { EdgeqError, fsError } from '../quant/errors.js';

export const artifactPath = (dir: string, sha256: string): string => join(dir, `${sha256}.onnx`);
export const partPath = (dir: string, sha256: string): string => join(dir, `${sha256}.part`);
const lockPath = (dir: string, sha256: string): string => join(dir, `${sha256}.lock`);

/** A .part file not touched for this long is no longer worth resuming. */
export const PART_MAX_AGE_MS = 7 * 24 * 3600 * 1000;

export function ensureDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw fsError(e, dir, true);
  }
}

/** fsync a directory, so a rename or unlink in it survives power loss. */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // Some file systems refuse fsync on directories; the rename itself is still atomic.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function alive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the fetch lock of `sha256` in `dir` (a file created with O_EXCL holding our pid); a lock
 * whose process is gone is taken over. E_ALREADY_RUNNING while another live process holds it.
 * Returns the release function.
 */
export function lockArtifact(dir: string, sha256: string): () => void {
  const path = lockPath(dir, sha256);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, 'wx', 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => {
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw fsError(e, path, true);
    }
    let pid = NaN;
    try {
      pid = Number(readFileSync(path, 'utf8').trim());
    } catch {
      continue; // removed meanwhile: try again
    }
    if (alive(pid)) throw new EdgeqError('E_ALREADY_RUNNING', `another edgeq process (pid ${pid}) is fetching the artifact ${sha256.slice(0, 12)}…; wait for it to finish`);
    try {
      unlinkSync(path);
    } catch {
      // someone else took it over
    }
  }
  throw new EdgeqError('E_ALREADY_RUNNING', `cannot take the lock ${path}`);
}

/**
 * Removes what crashed processes left behind: `*.<pid>.tmp` files and `.lock` files of
 * processes that are gone, and `.part` files older than PART_MAX_AGE_MS (younger ones are kept
 * for resuming). Returns the names removed.
 */
export function cleanStray(dir: string, now = Date.now()): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  const rm = (name: string) => {
    try {
      unlinkSync(join(dir, name));
      removed.push(name);
    } catch {
      // gone already
    }
  };
  for (const name of names) {
    const tmp = /\.(\d+)\.tmp$/.exec(name);
    if (tmp) {
      if (!alive(Number(tmp[1]))) rm(name);
      continue;
    }
    if (name.endsWith('.lock')) {
      let pid = NaN;
      try {
        pid = Number(readFileSync(join(dir, name), 'utf8').trim());
      } catch {
        continue;
      }
      if (!alive(pid)) rm(name);
      continue;
    }
    if (name.endsWith('.part')) {
      try {
        if (now - statSync(join(dir, name)).mtimeMs > PART_MAX_AGE_MS) rm(name);
      } catch {
        // gone already
      }
    }
  }
  if (removed.length) fsyncDir(dir);
  return removed;
}
