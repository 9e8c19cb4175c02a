/**
 * The fuzzing contract shared by the property tests (test/fuzz/) and the long runner
 * (tools/fuzz.ts): what a target is, and the one property every target is checked against —
 * each input either parses or fails with an EdgeqError of a code the parser may give; anything
 * else (another exception, a broken invariant on the parsed value, memory far beyond the input's
 * size) is a Finding. Hangs are the runner's to detect (a watchdog outside the process).
 */
import { accessSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import fc from 'fast-check';
import { isEdgeqError, type ErrorCode } from '../../quant/errors.js';

/** Set by the long runner for its children: their scratch files go there, and it removes them. */
export const SCRATCH_ENV = 'EDGEQ_FUZZ_SCRATCH';

/**
 * Where targets put files they parse: the runner's directory when it set one, else /dev/shm
 * where there is one (a file rewritten in place on ext4 is flushed to disk each time,
 * auto_da_alloc, which makes cases wait on the disk), else the system temp directory.
 */
export function scratchRoot(): string {
  const set = process.env[SCRATCH_ENV];
  if (set) return set;
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

export type FindingKind = 'exception' | 'error-code' | 'invariant' | 'memory' | 'hang' | 'crash';

/** A property violation. Thrown from a case, it fails the fast-check run. */
export class Finding extends Error {
  constructor(readonly kind: FindingKind, message: string, options?: { cause?: unknown }) {
    super(`[${kind}] ${message}`, options);
    this.name = 'Finding';
  }
}

/** Throws an invariant Finding unless `ok`. */
export function invariant(ok: unknown, what: string | (() => string)): asserts ok {
  if (!ok) throw new Finding('invariant', typeof what === 'string' ? what : what());
}

export interface FuzzTarget<I, C> {
  /** Used with --parser and as the test title. */
  readonly name: string;
  /** One line: what outside input this is and where it comes in. */
  readonly title: string;
  /** The functions a case runs, as file and name (for the docs and --help). */
  readonly entryPoints: readonly string[];
  /** What a case checks beyond "a value or an EdgeqError". */
  readonly checks: string;
  /** EdgeqError codes the parser may throw; any other code is a Finding. */
  readonly codes: readonly ErrorCode[];
  /** run() returns a promise (a fast-check async property; several times fewer cases per second). */
  readonly async?: boolean;
  /** fast-check runs in `npm test`; 0 leaves the target to the long run (native code). */
  readonly testRuns: number;
  /** The inputs. Must not need setup(): the runner replays a case's input in another process. */
  arbitrary(): fc.Arbitrary<I>;
  /** Per-process state (temporary files, a server), made once before the first case. */
  setup(): C | Promise<C>;
  teardown?(ctx: C): void | Promise<void>;
  /** One case: returns, or throws an EdgeqError (checked by runCase) or a Finding. */
  run(input: I, ctx: C): void | Promise<void>;
  /** Bytes of outside input in the case: the memory bound scales with it. */
  size(input: I): number;
  /** The case for a person (JSON-ish, long byte strings cut). */
  show(input: I): string;
  /** The raw input, to save as a reproducer file. */
  raw(input: I): Uint8Array;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a list of targets of different input types
export type AnyTarget = FuzzTarget<any, any>;

/**
 * A case may grow ArrayBuffers or the JS heap by this much plus MEMORY_PER_INPUT_BYTE times the
 * input's size; a parser must not allocate what its input does not pay for.
 */
export const MEMORY_FLOOR = 64 * 2 ** 20;
export const MEMORY_PER_INPUT_BYTE = 64;

function memoryBound(size: number): number {
  return MEMORY_FLOOR + MEMORY_PER_INPUT_BYTE * size;
}

/** An allowed EdgeqError: the parser refused the input, as it should. */
class Refused extends Error {
  constructor(readonly error: Error) {
    super(error.message);
  }
}

/** An allowed refusal (Refused) or a Finding, for anything a case threw. */
function classify(codes: readonly ErrorCode[], e: unknown): Refused | Finding {
  if (e instanceof Finding) return e;
  if (isEdgeqError(e)) {
    if (codes.includes(e.code)) return new Refused(e);
    return new Finding('error-code', `EdgeqError ${e.code} is not a code this parser gives (${codes.join(', ')}): ${e.message}`, { cause: e });
  }
  const err = e as Error | undefined;
  const stack = err?.stack ? `\n${err.stack.split('\n').slice(0, 8).join('\n')}` : '';
  return new Finding('exception', `${err?.name ?? typeof e}: ${String(err?.message ?? e)}${stack}`, { cause: e });
}

/**
 * Runs one entry point of a target: its value, or undefined when it threw an EdgeqError with one
 * of `codes` (a refusal); any other exception becomes a Finding. For targets with several entry
 * points per case.
 */
export function tryParse<T>(codes: readonly ErrorCode[], fn: () => T): T | undefined {
  try {
    return fn();
  } catch (e) {
    const c = classify(codes, e);
    if (c instanceof Refused) return undefined;
    throw c;
  }
}

/** Called around each case by the long runner (its watchdog); tests pass none. */
export interface CaseHooks {
  start?(): void;
  end?(): void;
}

interface MemoryMark {
  arrayBuffers: number;
  heapUsed: number;
}

function mark(): MemoryMark {
  const m = process.memoryUsage();
  return { arrayBuffers: m.arrayBuffers, heapUsed: m.heapUsed };
}

function checkMemory<I>(target: FuzzTarget<I, unknown>, input: I, before: MemoryMark): void {
  const after = mark();
  const bound = memoryBound(target.size(input));
  const grew = Math.max(after.arrayBuffers - before.arrayBuffers, after.heapUsed - before.heapUsed);
  if (grew > bound) {
    throw new Finding('memory', `one case grew memory by ${(grew / 2 ** 20).toFixed(1)} MiB (ArrayBuffers ${after.arrayBuffers - before.arrayBuffers} B, JS heap ${after.heapUsed - before.heapUsed} B) for ${target.size(input)} bytes of input; the bound is ${(bound / 2 ** 20).toFixed(1)} MiB`);
  }
}

/** One case of `target`: the property. Resolves if the input parsed or was refused with an allowed code. */
export async function runCase<I, C>(target: FuzzTarget<I, C>, ctx: C, input: I, hooks?: CaseHooks): Promise<void> {
  hooks?.start?.();
  const before = mark();
  try {
    await target.run(input, ctx);
  } catch (e) {
    const c = classify(target.codes, e);
    if (!(c instanceof Refused)) throw c;
  } finally {
    hooks?.end?.();
  }
  checkMemory(target, input, before);
}

/**
 * The synchronous form, for targets whose run() returns no promise: a fast-check sync property
 * runs several times more cases per second than an async one.
 */
export function runCaseSync<I, C>(target: FuzzTarget<I, C>, ctx: C, input: I, hooks?: CaseHooks): void {
  hooks?.start?.();
  const before = mark();
  try {
    const r = target.run(input, ctx);
    if (r instanceof Promise) throw new Finding('invariant', `target ${target.name} returned a promise but is not marked async`);
  } catch (e) {
    const c = classify(target.codes, e);
    if (!(c instanceof Refused)) throw c;
  } finally {
    hooks?.end?.();
  }
  checkMemory(target, input, before);
}

/** The fast-check property of a target over its arbitrary. */
export function propertyOf<I, C>(target: FuzzTarget<I, C>, ctx: C, hooks?: CaseHooks): fc.IProperty<[I]> | fc.IAsyncProperty<[I]> {
  if (target.async) return fc.asyncProperty(target.arbitrary(), (input) => runCase(target, ctx, input, hooks));
  return fc.property(target.arbitrary(), (input) => runCaseSync(target, ctx, input, hooks));
}

/** The input at `path` of a run with `seed`, generated again (the property is not run). */
export function replayInput<I>(target: FuzzTarget<I, unknown>, seed: number, path: string): I | undefined {
  let got: I | undefined;
  fc.check(
    fc.property(target.arbitrary(), (v) => {
      got = v;
      return true;
    }),
    { seed, path, numRuns: 1 },
  );
  return got;
}

/** JSON for showing inputs: bigints as strings, byte arrays as base64 (cut after `maxBytes`). */
export function showJson(value: unknown, maxBytes = 256): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v === 'bigint') return `${v}n`;
    if (v instanceof Uint8Array) {
      const b = Buffer.from(v.buffer, v.byteOffset, Math.min(v.byteLength, maxBytes)).toString('base64');
      return v.byteLength > maxBytes ? `<${v.byteLength} bytes, base64 ${b}…>` : `<${v.byteLength} bytes, base64 ${b}>`;
    }
    if (typeof v === 'number' && !Number.isFinite(v)) return String(v);
    if (typeof v === 'string' && v.length > 2000) return `${v.slice(0, 2000)}… (${v.length} chars)`;
    return v;
  });
}
