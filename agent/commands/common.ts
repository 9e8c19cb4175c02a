/** Options and set-up that commands working on the device's store share. */
import { Store } from '../store/index.js';
import { loadConfig, storeLimits, type AgentConfig } from '../config.js';
import { resolveStateDir, storeFile } from '../state.js';

export interface StoreArgs {
  'state-dir'?: string;
  config?: string;
  json: boolean;
}

export const STORE_OPTIONS = {
  'state-dir': { type: 'string', describe: 'state directory (default: $EDGEQ_STATE_DIR, the config\'s stateDir, /var/lib/edgeq as root, else ~/.local/state/edgeq)' },
  config: { type: 'string', describe: 'agent config file (JSON)' },
  json: { type: 'boolean', default: false, describe: 'print the result (or error) as one JSON object' },
} as const;

export interface Opened {
  store: Store;
  stateDir: string;
  config: AgentConfig | undefined;
}

/** Opens the store the flags, environment and config point at; the caller closes it. */
export function openStateStore(args: StoreArgs): Opened {
  const config = args.config ? loadConfig(args.config) : undefined;
  const stateDir = resolveStateDir({ flag: args['state-dir'], config: config?.stateDir });
  const store = Store.open(storeFile(stateDir));
  store.setLimits(storeLimits(config));
  return { store, stateDir, config };
}

/** Runs `fn` with the store open and closes it afterwards, whatever happens. */
export async function withStore<T>(args: StoreArgs, fn: (o: Opened) => Promise<T> | T): Promise<T> {
  const o = openStateStore(args);
  try {
    return await fn(o);
  } finally {
    o.store.close();
  }
}

/** The same for synchronous work (the store itself is synchronous). */
export function withStoreSync<T>(args: StoreArgs, fn: (o: Opened) => T): T {
  const o = openStateStore(args);
  try {
    return fn(o);
  } finally {
    o.store.close();
  }
}
