/** Facts about this device that reports and the fleet's status message carry. */
import { hostname, release, platform } from 'node:os';
import { ort } from '../quant/runtime.js';
import { presentIsa, type CpuFacts } from './detect.js';
import type { Report } from './protocol/report.js';

/** The wire shape (the report's `device`, and later the status message's). */
export type DeviceFacts = Report['device'];

export function deviceFacts(cpu: CpuFacts, id?: string): DeviceFacts {
  return {
    ...(id ? { id } : {}),
    hostname: hostname(),
    arch: cpu.arch,
    cpu: cpu.model || 'unknown',
    cores: cpu.cores.logical,
    isa: presentIsa(cpu.isa),
    os: `${platform()} ${release()}`,
    node: process.version,
    onnxruntime: ort.env.versions?.node ?? 'unknown',
  };
}
