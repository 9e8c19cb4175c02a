/**
 * How `edgeq fleet` speaks: results as JSON (--json) or text, errors as one line (or a JSON error
 * object) with the exit code scripts rely on. Kept apart from agent/output.ts on purpose: fleet/
 * imports nothing of the agent but agent/protocol (DESIGN.md §1).
 */

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** An error with a stable code; `usage` marks a wrong command line (exit 2 instead of 1). */
export class FleetError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly usage = false,
  ) {
    super(message);
    this.name = 'FleetError';
  }
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** One compact JSON object per line (--json for streams: send --wait, watch). */
export function printJsonLine(value: unknown): void {
  process.stdout.write(JSON.stringify(value) + '\n');
}

/** Reports an error and sets the exit code. */
export function reportError(e: unknown, json: boolean): void {
  const known = e instanceof FleetError;
  const code = known ? e.code : 'E_INTERNAL';
  const message = e instanceof Error ? e.message : String(e);
  if (json) printJson({ ok: false, error: { code, message } });
  else {
    process.stderr.write(`edgeq fleet: error: ${message}\n`);
    if (!known && e instanceof Error && process.env.EDGEQ_DEBUG) process.stderr.write(`${e.stack}\n`);
  }
  process.exitCode = known && e.usage ? EXIT_USAGE : EXIT_FAILED;
}

/** Columns padded to their widest cell; the first row is the header. */
export function table(rows: string[][]): string {
  const widths = rows[0].map((_c, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd()).join('\n') + '\n';
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(2)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

/** An ISO time as "2026-11-27 07:57:08" (UTC), or "—". */
export function formatTime(iso: string | null | undefined): string {
  return iso ? iso.replace('T', ' ').replace(/\.\d+Z$|Z$/, '') : '—';
}

export const pct = (x: number | null | undefined): string => (x === null || x === undefined ? '—' : `${(100 * x).toFixed(1)}%`);
