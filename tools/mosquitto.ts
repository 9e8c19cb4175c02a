/** Private mosquitto brokers for harnesses (the soak run, bench:fleet, the test helpers). */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export const MOSQUITTO_BIN = process.env.EDGEQ_MOSQUITTO ?? '/usr/sbin/mosquitto';

/** "mosquitto 2.0.11", or undefined when no mosquitto answers (`mosquitto -h` prints its version and exits non-zero). */
export function mosquittoVersion(): string | undefined {
  for (const bin of [MOSQUITTO_BIN, 'mosquitto']) {
    try {
      execFileSync(bin, ['-h'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (e) {
      const out = `${(e as { stdout?: string }).stdout ?? ''}${(e as { stderr?: string }).stderr ?? ''}`;
      const m = /mosquitto version (\S+)/.exec(out);
      if (m) return `mosquitto ${m[1]}`;
    }
  }
  return undefined;
}

export interface MosquittoConf {
  port: number;
  /** Holds the persistence file and the log. */
  dir: string;
  /** Extra lines after the listener (TLS settings, acl_file). */
  listenerLines?: string[];
  allowAnonymous?: boolean;
  logTypes?: string[];
}

/** The text of a mosquitto.conf: loopback listener, persistence saved every second, a log file. */
export function mosquittoConf(c: MosquittoConf): string {
  return [
    `listener ${c.port} 127.0.0.1`,
    ...(c.listenerLines ?? []),
    `allow_anonymous ${c.allowAnonymous === false ? 'false' : 'true'}`,
    'persistence true',
    `persistence_location ${c.dir}/`,
    'persistence_file mosquitto.db',
    'autosave_interval 1',
    `log_dest file ${join(c.dir, 'mosquitto.log')}`,
    ...(c.logTypes ?? ['all']).map((t) => `log_type ${t}`),
    // As root, mosquitto would switch to the "mosquitto" user, who cannot write the temp dir.
    ...(process.getuid?.() === 0 ? ['user root'] : []),
    '',
  ].join('\n');
}
