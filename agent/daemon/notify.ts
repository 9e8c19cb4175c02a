/**
 * sd_notify for `edgeq run` under systemd (Type=notify, WatchdogSec=): READY=1 once the daemon
 * is up, WATCHDOG=1 pings from a health check, STOPPING=1 when a graceful stop begins.
 *
 * How. systemd's notification socket ($NOTIFY_SOCKET) is a Unix *datagram* socket, and Node has
 * no AF_UNIX datagram sockets (node:dgram is UDP only, node:net is stream only). Rather than a
 * native addon (a compiler or a prebuilt binary per architecture, which the ARM devices and the
 * arm64 container would then need), the daemon runs systemd's own client, `systemd-notify`,
 * which is on every systemd machine. The unit sets NotifyAccess=all, because the message comes
 * from that child process, not from the main PID. `--pid=<daemon pid>` adds MAINPID= and, where
 * the service may send credentials for another process (root with CAP_SYS_ADMIN), sends the
 * message as the daemon itself.
 *
 * The usual objection to systemd-notify from a child is a race: systemd attributes a message
 * to a unit by the sender's cgroup, and a sender that has exited and been reaped cannot be
 * attributed. systemd-notify (v246+, Debian 12 ships 252) closes it itself: after the message
 * it sends BARRIER=1 with a pipe and waits until PID 1 has read both. Pings go every half of
 * WatchdogSec, so a slow one is tolerated; each call is bounded by SEND_TIMEOUT_MS.
 *
 * Where NOTIFY_SOCKET is unset (a shell, a container, the tests) everything here is a no-op and
 * nothing is spawned.
 */
import { execFile } from 'node:child_process';
import type { Log } from '../endpoint.js';

/** The systemd-notify binary (EDGEQ_SYSTEMD_NOTIFY overrides, for tests and odd installs). */
const NOTIFY_BIN = process.env.EDGEQ_SYSTEMD_NOTIFY ?? 'systemd-notify';
/** A systemd-notify that has not finished within this is killed (the socket never blocks this long). */
const SEND_TIMEOUT_MS = 5000;

/** The outcome of one health check: undefined when healthy, else why not. */
export type HealthCheck = () => Promise<string | undefined>;

/** Resolves after one full event-loop turn (timers, I/O polling, then check). */
export function loopTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class SystemdNotifier {
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private failedOnce = false;
  private unhealthy: string | undefined;
  private readonly pending = new Set<Promise<void>>();

  private constructor(
    private readonly socket: string | undefined,
    /** Ping interval (half of WATCHDOG_USEC), or undefined when the watchdog is off for this process. */
    readonly watchdogMs: number | undefined,
    private readonly log: Log,
  ) {}

  /** From the environment systemd gives the service: NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID. */
  static fromEnv(log: Log, env: NodeJS.ProcessEnv = process.env): SystemdNotifier {
    const socket = env.NOTIFY_SOCKET || undefined;
    let watchdogMs: number | undefined;
    const usec = Number(env.WATCHDOG_USEC);
    const forPid = env.WATCHDOG_PID === undefined || env.WATCHDOG_PID === '' || Number(env.WATCHDOG_PID) === process.pid;
    if (socket && Number.isFinite(usec) && usec > 0 && forPid) watchdogMs = Math.max(50, Math.floor(usec / 2000));
    return new SystemdNotifier(socket, watchdogMs, log);
  }

  /** True when a service manager listens (NOTIFY_SOCKET set). */
  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** READY=1 with a STATUS= line. */
  ready(status: string): Promise<void> {
    return this.send(['--ready', `--status=${status}`]);
  }

  /** STOPPING=1: the graceful stop has begun (systemd then waits up to TimeoutStopSec). */
  stopping(status: string): Promise<void> {
    this.stopWatchdog();
    return this.send(['STOPPING=1', `--status=${status}`]);
  }

  /**
   * Pings WATCHDOG=1 every half of WatchdogSec, each time only after `check` says healthy. An
   * unhealthy check skips the ping (logged once per cause): systemd then kills and restarts the
   * daemon when WatchdogSec passes without one.
   */
  startWatchdog(check: HealthCheck): void {
    if (!this.enabled || this.watchdogMs === undefined || this.timer || this.closed) return;
    const interval = this.watchdogMs;
    const tick = async () => {
      let why: string | undefined;
      try {
        why = await check();
      } catch (e) {
        why = `health check threw: ${(e as Error).message}`;
      }
      if (this.closed || this.timer === undefined) return;
      if (why === undefined) {
        if (this.unhealthy !== undefined) this.log({ level: 'info', event: 'watchdog-healthy', was: this.unhealthy });
        this.unhealthy = undefined;
        await this.send(['WATCHDOG=1']);
      } else if (why !== this.unhealthy) {
        this.unhealthy = why;
        this.log({ level: 'error', event: 'watchdog-unhealthy', why, note: 'no WATCHDOG=1 ping; systemd restarts the daemon when WatchdogSec passes without one' });
      }
      if (!this.closed && this.timer !== undefined) this.timer = setTimeout(() => void tick(), interval);
    };
    // The first ping goes at once: the start may have used much of the first watchdog period.
    this.timer = setTimeout(() => void tick(), 0);
    this.log({ level: 'info', event: 'watchdog-started', intervalMs: interval });
  }

  stopWatchdog(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Stops the watchdog and waits (bounded) for messages still being sent. */
  async close(): Promise<void> {
    this.stopWatchdog();
    this.closed = true;
    await Promise.all([...this.pending]);
  }

  private send(args: string[]): Promise<void> {
    if (!this.socket) return Promise.resolve();
    const p = new Promise<void>((resolve) => {
      execFile(NOTIFY_BIN, [`--pid=${process.pid}`, ...args], { timeout: SEND_TIMEOUT_MS, env: { ...process.env, NOTIFY_SOCKET: this.socket } }, (err, _stdout, stderr) => {
        if (err && !this.failedOnce) {
          this.failedOnce = true;
          const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
          this.log({
            level: 'error',
            event: 'notify-failed',
            message: missing ? `${NOTIFY_BIN} not found` : `${err.message.split('\n')[0]} ${String(stderr).trim()}`.trim(),
            why: missing
              ? 'NOTIFY_SOCKET is set but systemd-notify is missing: install systemd (it ships systemd-notify) or set EDGEQ_SYSTEMD_NOTIFY'
              : 'systemd did not get this notification; with Type=notify the unit needs NotifyAccess=all',
          });
        }
        resolve();
      });
    });
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
    return p;
  }
}
