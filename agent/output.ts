/**
 * How commands speak: a result as JSON (--json) or as text, and an error as one line naming the
 * problem (or a JSON error object), with the exit code scripts can rely on.
 */
import { isEdgeqError } from '../quant/errors.js';

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** Reports an error and sets the exit code. Unexpected errors keep their stack for bug reports. */
export function reportError(e: unknown, json: boolean): void {
  const known = isEdgeqError(e);
  const code = known ? e.code : 'E_INTERNAL';
  const message = e instanceof Error ? e.message : String(e);
  if (json) printJson({ ok: false, error: { code, message } });
  else {
    process.stderr.write(`edgeq: error: ${message}\n`);
    if (!known && e instanceof Error && process.env.EDGEQ_DEBUG) process.stderr.write(`${e.stack}\n`);
  }
  process.exitCode = EXIT_FAILED;
}

/** A one-line progress indicator on a terminal; silent when stderr is piped or --json is on. */
export function progressLine(enabled: boolean): { update(label: string, done: number, total: number): void; done(): void } {
  const tty = enabled && process.stderr.isTTY;
  let last = 0;
  return {
    update(label, done, total) {
      if (!tty) return;
      const now = Date.now();
      if (now - last < 100 && done < total) return;
      last = now;
      const pct = total ? Math.floor((100 * done) / total) : 100;
      process.stderr.write(`\r${label} ${done}/${total} (${pct}%)`);
    },
    done() {
      if (tty) process.stderr.write('\r\x1b[K');
    },
  };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}
