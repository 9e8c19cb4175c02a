/** Text renderings of devices, reports and replies for `edgeq fleet`. */
import type { Reply, Report, Status } from '../agent/protocol/index.js';
import { formatBytes, formatTime, pct, table } from './output.js';
import type { DeviceRecord, ReportRecord } from './store/types.js';

const ms = (x: number) => `${x < 1 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(0)} ms`;
const points = (x: number | null) => (x === null ? '—' : `${x > 0 ? '-' : x < 0 ? '+' : ''}${Math.abs(x).toFixed(1)} pt`);

export function renderDevices(devices: readonly DeviceRecord[]): string {
  if (devices.length === 0) return 'no devices (none has published a status under this prefix yet)\n';
  const rows = [['device', 'online', 'arch', 'profile', 'cpu', 'models', 'last seen', 'last report']];
  for (const d of devices) {
    const models = Object.entries(d.models).map(([n, m]) => `${n}@v${m.version}`).join(', ') || '—';
    const r = d.lastReport;
    const last = r ? `${r.model} ${r.speedup.toFixed(2)}× ${(100 * r.sizeRatio).toFixed(0)}% size ${r.dropPoints !== null ? points(r.dropPoints) : r.agreement !== null ? `agree ${pct(r.agreement)}` : ''} (${formatTime(r.createdAt)})` : '—';
    rows.push([d.deviceId, d.online === null ? '?' : d.online ? 'yes' : 'no', d.arch ?? '—', d.profile ?? '—', d.cpu ?? '—', models, formatTime(d.lastSeen), last.replace(/ {2,}/g, ' ')]);
  }
  const online = devices.filter((d) => d.online).length;
  return table(rows) + `${devices.length} device${devices.length === 1 ? '' : 's'}, ${online} online\n`;
}

export function renderReports(reports: readonly ReportRecord[], latestOnly: boolean): string {
  if (reports.length === 0) return 'no reports\n';
  const rows = [['device', 'model', 'profile', 'method', 'size fp32 → int8', 'p50 fp32', 'p50 int8', 'speedup', 'top-1 fp32', 'top-1 int8', 'drop', 'agreement', 'when']];
  for (const r of reports) {
    rows.push([
      r.deviceId,
      r.model,
      r.profile,
      r.method,
      `${formatBytes(r.fp32Bytes)} → ${formatBytes(r.int8Bytes)} (${((100 * r.int8Bytes) / r.fp32Bytes).toFixed(1)}%)`,
      ms(r.fp32P50Ms),
      ms(r.int8P50Ms),
      `${r.speedup.toFixed(2)}×`,
      pct(r.fp32Top1),
      pct(r.int8Top1),
      points(r.dropPoints),
      pct(r.agreement),
      formatTime(r.createdAt),
    ]);
  }
  const devices = new Set(reports.map((r) => r.deviceId)).size;
  const speedups = reports.map((r) => r.speedup).sort((a, b) => a - b);
  const median = speedups[Math.floor(speedups.length / 2)];
  return table(rows) + `${reports.length} report${reports.length === 1 ? '' : 's'} from ${devices} device${devices === 1 ? '' : 's'}${latestOnly ? ' (newest per device and model; --history for all)' : ''}, median speedup ${median.toFixed(2)}×\n`;
}

function brief(value: unknown, max = 100): string {
  const s = JSON.stringify(value);
  return s === undefined ? '' : s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** One line per reply: device, state, progress or result or error. */
export function replyLine(deviceId: string, r: Reply, width = 0): string {
  const parts = [deviceId.padEnd(width), r.state.padEnd(9)];
  if (r.type) parts.push(r.type);
  if (r.progress !== undefined) parts.push(`${Math.round(100 * r.progress)}%`);
  if (r.stage) parts.push(r.stage);
  if (r.error) parts.push(`${r.error.code}: ${r.error.message}`);
  else if (r.result !== undefined && r.state === 'succeeded') parts.push(brief(r.result));
  return parts.join('  ').trimEnd();
}

export function reportLine(deviceId: string, r: Report, width = 0): string {
  const a = r.accuracy;
  const acc = a.fp32Top1 !== undefined && a.int8Top1 !== undefined ? `top-1 ${pct(a.fp32Top1)} → ${pct(a.int8Top1)}` : a.agreement !== undefined ? `agreement ${pct(a.agreement)}` : '';
  return [deviceId.padEnd(width), 'report   ', r.model.name, `${formatBytes(r.model.sizeBytes)} → ${formatBytes(r.int8.sizeBytes)}`, `p50 ${ms(r.latency.fp32.p50Ms)} → ${ms(r.latency.int8.p50Ms)} (${r.latency.speedup.toFixed(2)}×)`, acc, `${r.quantization.profile}/${r.quantization.method}`]
    .filter(Boolean)
    .join('  ');
}

export function statusLine(deviceId: string, s: Status, applied: boolean, width = 0): string {
  if (!applied) return `${deviceId.padEnd(width)}  offline  (a stale will, seq ${s.seq}: ignored)`;
  if (!s.online) return `${deviceId.padEnd(width)}  offline  seq ${s.seq}`;
  const models = Object.entries(s.models ?? {}).map(([n, m]) => `${n}@v${m.version}`).join(', ');
  return [deviceId.padEnd(width), 'online   ', `seq ${s.seq}`, s.device?.arch, s.profile?.name, models, s.job ? `running ${s.job.type} ${s.job.cmdId}` : ''].filter(Boolean).join('  ');
}
