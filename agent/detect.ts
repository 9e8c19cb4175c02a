/**
 * CPU facts that decide the quantization profile. /proc/cpuinfo and os.arch() are the ground
 * truth on Linux; the same parser reads recorded cpuinfo texts in tests.
 */
import { readFileSync } from 'node:fs';
import { arch } from 'node:os';
import { PROFILES, profileWith, type Profile } from '../quant/profiles.js';

export interface CpuFacts {
  arch: string;
  flags: Set<string>;
}

export function parseCpuFlags(cpuinfo: string): Set<string> {
  // x86 lists "flags", ARM lists "Features"; the first processor speaks for all.
  const m = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(cpuinfo);
  return new Set(m ? m[1].trim().split(/\s+/) : []);
}

export function localCpu(): CpuFacts {
  let text = '';
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    // Not Linux: the architecture alone decides.
  }
  return { arch: arch(), flags: parseCpuFlags(text) };
}

export interface ProfileChoice {
  profile: Profile;
  reason: string;
}

export function chooseProfile(cpu: CpuFacts): ProfileChoice {
  if (cpu.arch === 'arm64' || cpu.arch === 'arm') {
    return { profile: profileWith('qnnpack'), reason: `${cpu.arch}: qnnpack, per-tensor weights, no reduce_range` };
  }
  const vnni = cpu.flags.has('avx512_vnni') || cpu.flags.has('avx_vnni');
  if (vnni) {
    return { profile: profileWith('fbgemm'), reason: 'x86-64 with VNNI: fbgemm, per-channel, no reduce_range' };
  }
  return {
    profile: profileWith('fbgemm', { reduceRange: true }),
    reason: 'x86-64 without VNNI: fbgemm, per-channel, reduce_range (7-bit weights avoid u8×s8 saturation)',
  };
}

export function defaultProfileName(cpu: CpuFacts): keyof typeof PROFILES {
  return chooseProfile(cpu).profile.name;
}
