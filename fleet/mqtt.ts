/** MQTT connection options shared by the controller and the simulated devices (mqtt.js, MQTT 5). */
import { readFileSync } from 'node:fs';
import type { IClientOptions } from 'mqtt';
import { PREFIX } from '../agent/protocol/index.js';
import { FleetError } from './output.js';

export const DEFAULT_BROKER = 'mqtt://127.0.0.1:1883';

export interface BrokerOptions {
  /** mqtt://host:port, mqtts://…, ws(s)://… */
  broker: string;
  /** Topic root (default edgeq/v1). */
  prefix: string;
  /** PEM files: CA bundle to trust, client certificate and key (mutual TLS). */
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  username?: string;
  password?: string;
}

function readPem(flag: string, path: string | undefined): Buffer | undefined {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path);
  } catch (e) {
    throw new FleetError('E_FILE_NOT_FOUND', `${flag} ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
}

/** Checks the prefix and turns BrokerOptions into mqtt.js options (MQTT 5, no automatic retry of the first connect). */
export function mqttOptions(o: BrokerOptions): IClientOptions {
  if (!PREFIX.test(o.prefix)) throw new FleetError('E_ARGUMENT', `--prefix ${JSON.stringify(o.prefix)}: topic levels of letters, digits, . _ - separated by /, no wildcards`, true);
  let url: URL;
  try {
    url = new URL(o.broker);
  } catch {
    throw new FleetError('E_ARGUMENT', `--broker ${JSON.stringify(o.broker)} is not a URL (e.g. mqtt://127.0.0.1:1883 or mqtts://broker:8883)`, true);
  }
  if (!['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'tls:', 'ws:', 'wss:'].includes(url.protocol)) {
    throw new FleetError('E_ARGUMENT', `--broker ${o.broker}: use mqtt://, mqtts://, ws:// or wss://`, true);
  }
  const ca = readPem('--tls-ca', o.tlsCa);
  const cert = readPem('--tls-cert', o.tlsCert);
  const key = readPem('--tls-key', o.tlsKey);
  if ((cert === undefined) !== (key === undefined)) throw new FleetError('E_ARGUMENT', '--tls-cert and --tls-key go together', true);
  return {
    protocolVersion: 5,
    connectTimeout: 10_000,
    reconnectPeriod: 1000,
    ...(ca ? { ca } : {}),
    ...(cert ? { cert, key } : {}),
    ...(o.username !== undefined ? { username: o.username } : {}),
    ...(o.password !== undefined ? { password: o.password } : {}),
  };
}
