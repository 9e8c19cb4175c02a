/**
 * Quantization profiles as data (DESIGN.md §3). A profile fixes how weights and activations are
 * represented; the CPU decides which profile fits (agent/ picks it, quant/ only reads it).
 */
export type ProfileName = 'fbgemm' | 'qnnpack';
export type ActivationType = 'uint8' | 'int8';
import type { CalibrationMethod } from './observe/range-search.js';

export type { CalibrationMethod };

export interface Profile {
  name: ProfileName;
  /** Weights are int8 symmetric (zero point 0) in both profiles: MLAS's fast symmetric kernels. */
  perChannel: boolean;
  /** 7-bit weights, for u8×s8 on x86 without VNNI where VPMADDUBSW's int16 pair sums saturate. */
  reduceRange: boolean;
  activations: ActivationType;
  method: CalibrationMethod;
  /** Histogram bins for the histogram observer. */
  bins: number;
}

export const PROFILES: Readonly<Record<ProfileName, Readonly<Profile>>> = {
  // x86-64: per-channel weights and uint8 activations, the only activation type whose
  // fusions survive residual branches on x86 (DESIGN.md §3).
  fbgemm: { name: 'fbgemm', perChannel: true, reduceRange: false, activations: 'uint8', method: 'histogram', bins: 2048 },
  // ARM64: per-tensor weights as PyTorch's qnnpack; no reduce_range (NEON has no saturation issue).
  qnnpack: { name: 'qnnpack', perChannel: false, reduceRange: false, activations: 'uint8', method: 'histogram', bins: 2048 },
};

export function isProfileName(s: string): s is ProfileName {
  return s === 'fbgemm' || s === 'qnnpack';
}

export function profileWith(name: ProfileName, overrides: Partial<Omit<Profile, 'name'>> = {}): Profile {
  const base = PROFILES[name];
  const out: Profile = { ...base };
  for (const [k, v] of Object.entries(overrides)) if (v !== undefined) (out as unknown as Record<string, unknown>)[k] = v;
  return out;
}
