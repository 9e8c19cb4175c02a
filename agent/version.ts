/** The agent's version, from package.json (one place for it). */
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { name: string; version: string };

export const AGENT_NAME = pkg.name;
export const AGENT_VERSION = pkg.version;
