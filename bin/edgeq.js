#!/usr/bin/env node
// The CLI is written in TypeScript and compiled to dist/ by `npm ci` (the `prepare` script).
// `edgeq fleet …` is the fleet controller (fleet/), everything else the device side (agent/):
// the two share only agent/protocol, so each loads only its own half.
if (process.argv[2] === 'fleet') await import('../dist/fleet/cli.js');
else await import('../dist/agent/cli.js');
