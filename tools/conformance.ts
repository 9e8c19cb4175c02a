/**
 * Codec conformance against the ONNX backend test data: for every model.onnx, ORT's outputs on
 * the original and on encodeModel(readModel(model)) must be bit-identical on every data set.
 *
 *   npm run conformance [-- [--data DIR] [--json] [--verbose] [FILTER ...]]
 *
 * FILTERs keep only cases whose name (e.g. `test_conv`) contains one of them; a FILTER with a `/`
 * matches the id instead (`pytorch-converted/`, `node/test_if`). DIR holds `node/` and
 * `pytorch-converted/`, or is searched itself if it has neither (`--data test/fixtures/onnx-testdata`).
 * Exits 1 if any case failed, 2 on a usage error or when no case was found.
 */
import { existsSync } from 'node:fs';
import { checkRoundTrip, findTestCases, DEFAULT_TESTDATA_ROOT, DEFAULT_TESTDATA_DIRS } from './onnx-testcase.js';
import type { CaseResult } from './onnx-testcase.js';

interface Args {
  data: string;
  json: boolean;
  verbose: boolean;
  filters: string[];
}

const USAGE = 'usage: conformance [--data DIR] [--json] [--verbose] [FILTER ...]';

function parseArgs(argv: string[]): Args {
  const args: Args = { data: DEFAULT_TESTDATA_ROOT, json: false, verbose: false, filters: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') args.json = true;
    else if (a === '--verbose' || a === '-v') args.verbose = true;
    else if (a === '--data') {
      const v = argv[++i];
      if (v === undefined) throw new Error('--data needs a directory');
      args.data = v;
    } else if (a.startsWith('--data=')) args.data = a.slice('--data='.length);
    else if (a === '--help' || a === '-h') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
    else args.filters.push(a);
  }
  return args;
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const fail = (message: string): number => {
    if (args.json) process.stdout.write(`${JSON.stringify({ error: { code: 'E_ARGUMENT', message } })}\n`);
    else process.stderr.write(`${message}\n`);
    return 2;
  };
  if (!existsSync(args.data)) return fail(`test data not found: ${args.data} (install the Debian package libonnx-testdata or pass --data DIR)`);
  const cases = findTestCases(args.data, DEFAULT_TESTDATA_DIRS, args.filters);
  if (cases.length === 0) {
    return fail(`no model.onnx under ${args.data}${args.filters.length ? ` matching ${args.filters.join(', ')}` : ''}`);
  }

  const progress = !args.json && process.stderr.isTTY;
  const started = Date.now();
  const results: CaseResult[] = [];
  for (const [i, tc] of cases.entries()) {
    if (progress) process.stderr.write(`\r\x1b[K[${i + 1}/${cases.length}] ${tc.id}`);
    const r = await checkRoundTrip(tc);
    results.push(r);
    if (!args.json && r.status === 'failed') {
      if (progress) process.stderr.write('\r\x1b[K');
      process.stdout.write(`FAIL ${r.id}: ${r.reason}\n`);
    }
    if (!args.json && args.verbose && r.status === 'skipped') {
      if (progress) process.stderr.write('\r\x1b[K');
      process.stdout.write(`skip ${r.id}: ${r.reason}\n`);
    }
  }
  if (progress) process.stderr.write('\r\x1b[K');

  const count = (s: CaseResult['status']): number => results.filter((r) => r.status === s).length;
  const passed = count('passed');
  const failed = count('failed');
  const skipped = count('skipped');
  const seconds = (Date.now() - started) / 1000;
  const reencoded = results.filter((r) => r.byteIdentical !== undefined);
  const identical = reencoded.filter((r) => r.byteIdentical).length;
  if (args.json) {
    process.stdout.write(`${JSON.stringify({
      data: args.data,
      filters: args.filters,
      total: results.length,
      passed,
      failed,
      skipped,
      dataSetsRun: results.reduce((n, r) => n + r.dataSets, 0),
      byteIdenticalReencodings: identical,
      reencoded: reencoded.length,
      seconds,
      failures: results.filter((r) => r.status === 'failed').map((r) => ({ id: r.id, reason: r.reason })),
      skips: results.filter((r) => r.status === 'skipped').map((r) => ({ id: r.id, reason: r.reason })),
    }, null, 2)}\n`);
  } else {
    process.stdout.write(`${skipped} skipped (ORT cannot run the original)${args.verbose ? '' : '; --verbose lists them'}\n`);
    process.stdout.write(`${identical} of ${reencoded.length} re-encoded models are byte-identical to their file (not required)\n`);
    process.stdout.write(`${results.length} models from ${args.data} in ${seconds.toFixed(1)} s\n`);
    process.stdout.write(`${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
  return failed > 0 ? 1 : 0;
}

process.exitCode = await main();
