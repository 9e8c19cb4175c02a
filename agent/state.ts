/**
 * Where the agent keeps its state (the SQLite store, model files, the endpoint's socket): one
 * directory, found the same way by every command.
 */
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export interface StateDirSources {
  /** --state-dir */
  flag?: string;
  /** stateDir from the config file */
  config?: string;
  env?: NodeJS.ProcessEnv;
  /** Whether this process runs as root (process.getuid() === 0). */
  root?: boolean;
}

/**
 * --state-dir, else EDGEQ_STATE_DIR, else the config's stateDir, else /var/lib/edgeq for root
 * (systemd's StateDirectory=edgeq) or $XDG_STATE_HOME/edgeq (~/.local/state/edgeq) for a user.
 */
export function resolveStateDir(src: StateDirSources = {}): string {
  const env = src.env ?? process.env;
  const pick = src.flag || env.EDGEQ_STATE_DIR || src.config;
  if (pick) return resolve(pick);
  const root = src.root ?? process.getuid?.() === 0;
  if (root) return '/var/lib/edgeq';
  return join(env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'edgeq');
}

export const storeFile = (stateDir: string): string => join(stateDir, 'edgeq.db');
export const modelsDir = (stateDir: string): string => join(stateDir, 'models');
export const socketFile = (stateDir: string): string => join(stateDir, 'edgeq.sock');
