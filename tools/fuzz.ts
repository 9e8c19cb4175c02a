/**
 * The long fuzz run: each parser's property (tools/fuzzing/targets.ts) for N seconds, every
 * parser in its own child process with a bounded heap and address space, watched from outside.
 *
 *   npm run fuzz -- --seconds N [--parser NAME[,NAME...]] [--json] [--jobs J] [--seed S]
 *
 * Prints the cases tried and the findings per parser; exits 1 on any finding, 2 on a usage error.
 * See --help and docs/fuzzing.md.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { Finding, propertyOf, replayInput, SCRATCH_ENV, scratchRoot, type AnyTarget, type CaseHooks, type FindingKind } from './fuzzing/core.js';
import { TARGETS, targetNamed } from './fuzzing/targets.js';

const SELF = fileURLToPath(import.meta.url);

interface Options {
  seconds: number;
  parsers: string[];
  json: boolean;
  jobs: number;
  seed: number;
  caseTimeoutMs: number;
  heapMb: number;
  addressSpaceMb: number;
  rssMb: number;
  out: string;
  maxFindings: number;
}

const HELP = `usage: npm run fuzz -- [--seconds N] [--parser NAME[,NAME...]] [--json] [options]

Runs each parser's fuzz property (tools/fuzzing/targets.ts) for N seconds and prints, per
parser, the cases tried and the findings. A finding is an input on which the parser threw
anything but an EdgeqError of a code it may give, returned a value that breaks the target's
invariants, grew memory far beyond the input's size, took longer than --case-timeout, or
killed its process (a native crash, running out of heap or address space). For each finding
the counterexample, the seed and the path (fast-check's replay coordinates) are printed and the
raw input is saved under --out. A parser goes on after a finding (findings of the same kind
and message are counted once, with how often they were seen) until its time is up or it has
--max-findings of them. Exit status: 0 no finding, 1 a finding, 2 a usage error.

Every parser runs in a child process (node --max-old-space-size, and ulimit -v for the address
space), in batches of fast-check runs with seeds derived from --seed; a watchdog in this
process kills a child whose current case runs too long or whose resident memory grows too big.

options:
  --seconds N          seconds per parser (default 60)
  --parser NAME,...    only these parsers (default: all); names:
${TARGETS.map((t) => `                         ${t.name.padEnd(14)} ${t.title}`).join('\n')}
  --json               print one JSON object (counts, findings, node version, date) instead of a table
  --jobs J             parsers run at once (default 1)
  --seed S             base seed, an integer (default: random; printed)
  --case-timeout MS    a case running longer is a hang finding (default 5000)
  --heap-mb MB         --max-old-space-size of each child (default 1024)
  --address-space-mb MB  ulimit -v of each child, 0 for none (default 8192)
  --rss-mb MB          resident memory of a child above this is a finding (default 2048)
  --out DIR            where findings' raw inputs are saved (default: a new directory in the system temp dir)
  --max-findings N     stop a parser after N distinct findings (default 10); until then it goes on
                       after a finding (a crashed or hung child is started again, with the next batch)
  --list               list the parsers and what each property checks, then exit
  --help               this text
`;

class UsageError extends Error {}

interface ChildArgs {
  child?: string;
  state?: string;
  /** The child's first batch: a child started again after a crash or hang goes on from there. */
  firstBatch: number;
  list: boolean;
}

function parseArgs(argv: string[]): Options & ChildArgs {
  const o: Options & ChildArgs = {
    seconds: 60, parsers: [], json: false, jobs: 1, seed: Math.floor(Math.random() * 2 ** 31), caseTimeoutMs: 5000, heapMb: 1024, addressSpaceMb: 8192, rssMb: 2048, out: '', maxFindings: 10, firstBatch: 0, list: false,
  };
  const num = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (v === undefined || v === '' || !Number.isFinite(n) || n < min) throw new UsageError(`${name} needs a number ≥ ${min}, got ${v ?? 'nothing'}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].startsWith('--') && argv[i].includes('=') ? [argv[i].slice(0, argv[i].indexOf('=')), argv[i].slice(argv[i].indexOf('=') + 1)] : [argv[i], undefined];
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--seconds': o.seconds = num(flag, value(), 0); break;
      case '--parser': case '--parsers': o.parsers.push(...(value() ?? '').split(',').filter((s) => s !== '')); break;
      case '--json': o.json = true; break;
      case '--jobs': o.jobs = Math.floor(num(flag, value(), 1)); break;
      case '--seed': o.seed = Math.floor(num(flag, value(), 0)) % 2 ** 31; break;
      case '--case-timeout': o.caseTimeoutMs = num(flag, value(), 100); break;
      case '--heap-mb': o.heapMb = Math.floor(num(flag, value(), 64)); break;
      case '--address-space-mb': o.addressSpaceMb = Math.floor(num(flag, value(), 0)); break;
      case '--rss-mb': o.rssMb = num(flag, value(), 64); break;
      case '--out': o.out = value() ?? ''; break;
      case '--max-findings': o.maxFindings = Math.floor(num(flag, value(), 1)); break;
      case '--first-batch': o.firstBatch = Math.floor(num(flag, value(), 0)); break;
      case '--list': o.list = true; break;
      case '--child': o.child = value(); break;
      case '--state': o.state = value(); break;
      case '--help': case '-h':
        process.stdout.write(HELP);
        process.exit(0);
        break;
      default:
        throw new UsageError(`unknown argument ${argv[i]} (see --help)`);
    }
  }
  for (const p of o.parsers) if (!targetNamed(p)) throw new UsageError(`no parser ${p} (parsers: ${TARGETS.map((t) => t.name).join(', ')})`);
  return o;
}

// ---------------------------------------------------------------------------------------------
// the child: one target, batches of fast-check runs until the time is up

/** The state record the child writes before each case: batch, case in batch, sequence number, phase. */
const STATE_BYTES = 16;
const PHASE = { setup: 0, running: 1, teardown: 2 } as const;

/** The seed of batch `b` of a run with base seed `seed`. */
function batchSeed(seed: number, b: number): number {
  return (seed + Math.imul(b, 0x9e3779b1)) >>> 1;
}

type ChildMessage =
  | { type: 'progress'; cases: number }
  | { type: 'finding'; kind: FindingKind; message: string; seed: number; path: string; counterexample: string; raw: string; cases: number }
  | { type: 'done'; cases: number };

async function child(name: string, o: Options & ChildArgs, stateFile: string): Promise<void> {
  const target = targetNamed(name)!;
  const fd = openSync(stateFile, 'r+');
  const rec = Buffer.alloc(STATE_BYTES);
  const put = (batch: number, index: number, seq: number, phase: number) => {
    rec.writeInt32LE(batch, 0);
    rec.writeInt32LE(index, 4);
    rec.writeInt32LE(seq | 0, 8);
    rec.writeInt32LE(phase, 12);
    writeSync(fd, rec, 0, STATE_BYTES, 0);
  };
  const send = (m: ChildMessage) => new Promise<void>((resolve) => process.send!(m, () => resolve()));
  put(0, 0, 0, PHASE.setup);
  const ctx = await target.setup();
  let batch = o.firstBatch;
  const seen = new Set<string>();
  let index = 0;
  let cases = 0;
  const hooks: CaseHooks = {
    start() {
      put(batch, index, cases, PHASE.running);
      index++;
      cases++;
    },
  };
  const deadline = performance.now() + o.seconds * 1000;
  try {
    while (deadline - performance.now() > 50) {
      index = 0;
      const seed = batchSeed(o.seed, batch);
      const details = await fc.check(propertyOf(target, ctx, hooks), {
        seed,
        numRuns: 1_000_000_000,
        interruptAfterTimeLimit: Math.max(1, Math.min(2000, deadline - performance.now())),
        markInterruptAsFailure: false,
      });
      // Interrupted before its first run (the time was up): fast-check calls that a failure.
      if (details.failed && details.interrupted && details.numRuns === 0) break;
      if (details.failed) {
        const input = details.counterexample?.[0];
        const err = details.errorInstance;
        const kind: FindingKind = err instanceof Finding ? err.kind : 'exception';
        const run = (details.counterexamplePath ?? 'x').split(':')[0];
        const rawPath = join(o.out, `${name}-${seed}-${run}${details.counterexamplePath?.includes(':') ? '-shrunk' : ''}.bin`);
        if (input !== undefined) writeFileSync(rawPath, target.raw(input));
        const finding = { kind, message: err instanceof Error ? err.message : String(err), seed, path: details.counterexamplePath ?? '', counterexample: input === undefined ? '' : target.show(input), raw: input === undefined ? '' : rawPath };
        await send({ type: 'finding', ...finding, cases });
        seen.add(signature(finding));
        if (seen.size >= o.maxFindings) break;
      }
      batch++;
      await send({ type: 'progress', cases });
    }
  } finally {
    put(batch, index, cases, PHASE.teardown);
    await target.teardown?.(ctx);
    closeSync(fd);
  }
  await send({ type: 'done', cases });
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------
// the parent: children, watchdog, report

interface FindingReport {
  kind: FindingKind;
  message: string;
  seed: number;
  path: string;
  counterexample: string;
  raw: string;
  /** Findings of the same kind and message (numbers aside) seen in this run; the first is shown. */
  count?: number;
}

interface ParserReport {
  parser: string;
  cases: number;
  seconds: number;
  findings: FindingReport[];
}

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function readState(file: string): { batch: number; index: number; seq: number; phase: number } {
  const b = readFileSync(file);
  if (b.length < STATE_BYTES) return { batch: 0, index: 0, seq: 0, phase: PHASE.setup };
  return { batch: b.readInt32LE(0), index: b.readInt32LE(4), seq: b.readInt32LE(8), phase: b.readInt32LE(12) };
}

/** The case the child was running when it hung or died, generated again in this process. */
function inFlight(target: AnyTarget, o: Options, state: { batch: number; index: number; phase: number }, kind: FindingKind, message: string): FindingReport {
  if (state.phase !== PHASE.running) return { kind, message: `${message} (during ${state.phase === PHASE.setup ? 'setup' : 'teardown'})`, seed: o.seed, path: '', counterexample: '', raw: '' };
  const seed = batchSeed(o.seed, state.batch);
  const path = String(state.index);
  let counterexample = '';
  let raw = '';
  try {
    const input = replayInput(target, seed, path);
    if (input !== undefined) {
      counterexample = target.show(input);
      raw = join(o.out, `${target.name}-${seed}-${path}.bin`);
      writeFileSync(raw, target.raw(input));
    }
  } catch (e) {
    counterexample = `(could not generate it again: ${(e as Error).message})`;
  }
  return { kind, message, seed, path, counterexample, raw };
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** A finding's kind and the first line of its message (numbers and stderr aside): the same bug seen again. */
function signature(f: { kind: FindingKind; message: string }): string {
  return `${f.kind} ${f.message.split('\n')[0].split('; stderr:')[0].replace(/[0-9]+/g, 'N').slice(0, 200)}`;
}

function addFinding(report: ParserReport, f: FindingReport): void {
  const same = report.findings.find((g) => signature(g) === signature(f));
  if (same) same.count = (same.count ?? 1) + 1;
  else report.findings.push({ ...f, count: 1 });
}

interface ChildRun {
  cases: number;
  /** Ended by itself, after its time (not killed, not crashed). */
  finished: boolean;
  /** The batch it was in when it ended. */
  batch: number;
}

/** One child process for `target`, from batch `firstBatch`, for `seconds`; its findings go into `report`. */
function runChild(target: AnyTarget, o: Options, stateFile: string, firstBatch: number, seconds: number, report: ParserReport, casesBefore: number): Promise<ChildRun> {
  writeFileSync(stateFile, Buffer.alloc(STATE_BYTES));
  const started = performance.now();
  const args = ['--child', target.name, '--state', stateFile, '--seconds', String(seconds), '--seed', String(o.seed), '--out', o.out, '--first-batch', String(firstBatch), '--max-findings', String(o.maxFindings)];
  const execArgv = [`--max-old-space-size=${o.heapMb}`];
  let proc: ChildProcess;
  if (o.addressSpaceMb > 0) {
    // ulimit -v bounds ArrayBuffers and native allocations too, which the heap limit does not.
    proc = fork(SELF, args, { execPath: '/bin/sh', execArgv: ['-c', `ulimit -v ${o.addressSpaceMb * 1024} && exec "$0" "$@"`, process.execPath, ...execArgv], stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  } else {
    proc = fork(SELF, args, { execArgv, stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  }
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString('utf8')).slice(-4000);
  });
  let done = false;
  let cases = 0;
  let killedFor: FindingReport | undefined;
  let lastSeq = -1;
  let lastChange = performance.now();
  let lastPhase: number = PHASE.setup;
  let lastLog = performance.now();
  proc.on('message', (m: ChildMessage) => {
    cases = m.cases;
    report.cases = casesBefore + cases;
    if (m.type === 'finding') addFinding(report, { kind: m.kind, message: m.message, seed: m.seed, path: m.path, counterexample: m.counterexample, raw: m.raw });
    if (m.type === 'done') done = true;
  });
  const watchdog = setInterval(() => {
    const now = performance.now();
    const st = readState(stateFile);
    if (st.seq !== lastSeq || st.phase !== lastPhase) {
      lastSeq = st.seq;
      lastPhase = st.phase;
      lastChange = now;
    }
    // Setup and teardown load models or start a server: they get a minute.
    const limit = st.phase === PHASE.running ? o.caseTimeoutMs : 60_000;
    const overall = now - started > (seconds + 120) * 1000;
    const rss = proc.pid ? rssBytes(proc.pid) : 0;
    let finding: FindingReport | undefined;
    if (now - lastChange > limit) finding = inFlight(target, o, st, 'hang', `no progress for ${((now - lastChange) / 1000).toFixed(1)} s (case timeout ${o.caseTimeoutMs} ms)`);
    else if (overall) finding = inFlight(target, o, st, 'hang', `still running ${Math.round((now - started) / 1000)} s after the start (limit: --seconds + 120)`);
    else if (rss > o.rssMb * 2 ** 20) finding = inFlight(target, o, st, 'memory', `resident memory ${Math.round(rss / 2 ** 20)} MiB is over --rss-mb ${o.rssMb}`);
    if (finding && !killedFor) {
      killedFor = finding;
      proc.kill('SIGKILL');
    }
    if (now - lastLog > 30_000) {
      lastLog = now;
      log(`  ${target.name}: ${casesBefore + Math.max(cases, st.seq)} cases`);
    }
  }, 250);
  return new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      clearInterval(watchdog);
      const st = readState(stateFile);
      cases = Math.max(cases, st.seq + (st.phase === PHASE.running ? 1 : 0));
      report.cases = casesBefore + cases;
      if (killedFor) addFinding(report, { ...killedFor, message: `${killedFor.message}; stderr: ${stderr.slice(-1000)}` });
      else if (!done || code !== 0) {
        const how = signal ? `killed by ${signal}` : `exit code ${code}`;
        const kind: FindingKind = /heap out of memory|Allocation failed|allocation failed|ENOMEM|bad_alloc/i.test(stderr) ? 'memory' : 'crash';
        addFinding(report, inFlight(target, o, st, kind, `the process died (${how}); stderr: ${stderr.slice(-1500)}`));
      }
      resolve({ cases, finished: done && code === 0 && !killedFor, batch: st.batch });
    });
  });
}

/**
 * Fuzzes one parser for --seconds: a child process, started again (from the next batch) when it
 * crashes, hangs or outgrows its memory, until the time is up or --max-findings distinct findings.
 */
async function runParser(target: AnyTarget, o: Options, work: string): Promise<ParserReport> {
  const stateFile = join(work, `${target.name}.state`);
  const report: ParserReport = { parser: target.name, cases: 0, seconds: 0, findings: [] };
  const started = performance.now();
  let batch = 0;
  for (;;) {
    const left = o.seconds - (performance.now() - started) / 1000;
    const r = await runChild(target, o, stateFile, batch, Math.max(0, left), report, report.cases);
    batch = r.batch + 1;
    if (r.finished || report.findings.length >= o.maxFindings || o.seconds - (performance.now() - started) / 1000 < 1) break;
    log(`  ${target.name}: child ended with a finding; starting again at batch ${batch}`);
  }
  report.seconds = Math.round((performance.now() - started) / 100) / 10;
  return report;
}

function printTable(reports: ParserReport[], o: Options, command: string): void {
  const out: string[] = [];
  out.push(`node ${process.version}, ${new Date().toISOString()}, seed ${o.seed}, ${o.seconds} s per parser`);
  out.push(`command: ${command}`);
  out.push('');
  out.push(`${'parser'.padEnd(14)} ${'cases'.padStart(10)} ${'seconds'.padStart(8)} ${'cases/s'.padStart(9)} findings`);
  for (const r of reports) out.push(`${r.parser.padEnd(14)} ${String(r.cases).padStart(10)} ${r.seconds.toFixed(1).padStart(8)} ${(r.seconds ? r.cases / r.seconds : 0).toFixed(0).padStart(9)} ${r.findings.length}${r.findings.some((f) => (f.count ?? 1) > 1) ? ` (${r.findings.reduce((a, f) => a + (f.count ?? 1), 0)} in all)` : ''}`);
  for (const r of reports) {
    for (const f of r.findings) {
      out.push('');
      out.push(`FINDING in ${r.parser} (${f.kind}${(f.count ?? 1) > 1 ? `, seen ${f.count} times` : ''}): ${f.message}`);
      out.push(`  seed ${f.seed}, path ${JSON.stringify(f.path)} (replay: fc.check(property, { seed: ${f.seed}, path: ${JSON.stringify(f.path)} }))`);
      if (f.counterexample) out.push(`  counterexample: ${f.counterexample.slice(0, 4000)}`);
      if (f.raw) out.push(`  raw input saved to ${f.raw}`);
    }
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

async function main(): Promise<void> {
  let o: ReturnType<typeof parseArgs>;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`fuzz: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  if (o.child) return child(o.child, o, o.state!);
  if (o.list) {
    for (const t of TARGETS) process.stdout.write(`${t.name}: ${t.title}\n  entry points: ${t.entryPoints.join('; ')}\n  checks: a value or an EdgeqError (${t.codes.join(', ') || 'none: it returns its errors'}); ${t.checks}\n  npm test: ${t.testRuns ? `${t.testRuns} runs` : 'long run only'}\n`);
    return;
  }
  const targets = o.parsers.length ? o.parsers.map((p) => targetNamed(p)!) : [...TARGETS];
  if (!o.out) o.out = mkdtempSync(join(tmpdir(), 'edgeq-fuzz-findings-'));
  else mkdirSync(o.out, { recursive: true });
  // The state files, and the children's scratch files (SCRATCH_ENV): a child killed for a hang
  // or its memory leaves its files behind, and this directory goes at the end.
  const work = mkdtempSync(join(scratchRoot(), 'edgeq-fuzz-'));
  process.env[SCRATCH_ENV] = work;
  const command = `npm run fuzz -- ${process.argv.slice(2).join(' ')}`.trim();
  log(`fuzzing ${targets.map((t) => t.name).join(', ')} for ${o.seconds} s each, ${o.jobs} at a time, seed ${o.seed}`);
  const reports: ParserReport[] = new Array(targets.length);
  let next = 0;
  const worker = async () => {
    while (next < targets.length) {
      const i = next++;
      log(`${targets[i].name}: started`);
      reports[i] = await runParser(targets[i], o, work);
      log(`${targets[i].name}: ${reports[i].cases} cases in ${reports[i].seconds} s, ${reports[i].findings.length} finding(s)`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(o.jobs, targets.length) }, worker));
  rmSync(work, { recursive: true, force: true });
  const findings = reports.reduce((a, r) => a + r.findings.length, 0);
  if (findings === 0) rmSync(o.out, { recursive: true, force: true });
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ ok: findings === 0, node: process.version, date: new Date().toISOString(), command, seconds: o.seconds, seed: o.seed, caseTimeoutMs: o.caseTimeoutMs, parsers: reports }, null, 2)}\n`);
  } else printTable(reports, o, command);
  process.exit(findings ? 1 : 0);
}

await main();
