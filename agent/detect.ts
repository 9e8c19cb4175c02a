/**
 * CPU facts that decide the quantization profile (DESIGN.md §3). /proc/cpuinfo and os.arch() are
 * the ground truth on Linux; `parseCpuinfo` is a pure function of (cpuinfo text, arch) so tests
 * feed it recorded texts. systeminformation only fills what cpuinfo lacks (other OSes, physical
 * cores on ARM), and only in the async `localCpuAsync`; the sync `localCpu` used by
 * `edgeq quantize` reads nothing but /proc/cpuinfo and `node:os`.
 */
import { readFileSync } from 'node:fs';
import { arch as osArch, cpus } from 'node:os';
import type { Systeminformation } from 'systeminformation';
import { PROFILES, profileWith, type Profile } from '../quant/profiles.js';

/** The instruction-set features that matter to ONNX Runtime's int8 kernels (MLAS). */
export interface IsaSummary {
  /** x86: VPMADDUBSW u8×s8 kernels; without VNNI their int16 pair sums saturate. */
  avx2: boolean;
  avx512f: boolean;
  /** x86: VPDPBUSD, u8×s8 into int32 without saturation (Cascade Lake, Ice Lake, Zen 4, …). */
  avx512vnni: boolean;
  /** x86: the VEX-encoded VNNI of Alder Lake and later client cores. */
  avxvnni: boolean;
  /** x86: AMX tiles with int8 (Sapphire Rapids and later). */
  amx: boolean;
  /** ARM: Advanced SIMD (always present on arm64). */
  neon: boolean;
  /** ARM: SDOT/UDOT (ARMv8.2 dot product, "asimddp"). */
  dotprod: boolean;
  /** ARM: SMMLA/UMMLA int8 matrix multiply (ARMv8.6, optional from v8.2). */
  i8mm: boolean;
  sve: boolean;
}

export const ISA_KEYS: readonly (keyof IsaSummary)[] = ['avx2', 'avx512f', 'avx512vnni', 'avxvnni', 'amx', 'neon', 'dotprod', 'i8mm', 'sve'];

export type ArchFamily = 'x86' | 'arm' | 'other';

export interface CpuFacts {
  /** os.arch() values: x64, arm64, arm, ia32, ppc64, s390x, riscv64, … */
  arch: string;
  /** CPU model name ("Intel(R) Xeon(R) …", "Cortex-A72", "Neoverse-N1 + …"); '' when unknown. */
  model: string;
  /** "Intel", "AMD", "ARM", "Apple", …; '' when unknown. */
  vendor: string;
  /** Logical CPUs (0 when unknown); physical cores, or null when unknown. */
  cores: { logical: number; physical: number | null };
  /** Flag names as /proc/cpuinfo spells them ("flags" on x86, "Features" on ARM). */
  flags: Set<string>;
  isa: IsaSummary;
}

export function archFamily(arch: string): ArchFamily {
  if (arch === 'x64' || arch === 'ia32') return 'x86';
  if (arch === 'arm64' || arch === 'arm') return 'arm';
  return 'other';
}

/** The flag names of the first processor that lists any (they are the same for every CPU). */
export function parseCpuFlags(cpuinfo: string): Set<string> {
  // x86 lists "flags", ARM lists "Features"; "vmx flags" and the like must not match.
  const m = /^(?:flags|Features)[ \t]*:[ \t]*(.*)$/m.exec(cpuinfo);
  return new Set(m ? m[1].trim().split(/\s+/).filter((f) => f) : []);
}

/** The ISA summary from flag names; `arch` gates the families (x86 flags mean nothing on ARM). */
export function isaFromFlags(flags: ReadonlySet<string>, arch: string): IsaSummary {
  const fam = archFamily(arch);
  const x86 = (...names: string[]) => fam === 'x86' && names.some((n) => flags.has(n));
  const arm = (...names: string[]) => fam === 'arm' && names.some((n) => flags.has(n));
  return {
    avx2: x86('avx2'),
    avx512f: x86('avx512f'),
    // Linux spells them avx512_vnni / avx_vnni; the spellings without underscore are accepted too.
    avx512vnni: x86('avx512_vnni', 'avx512vnni'),
    avxvnni: x86('avx_vnni', 'avxvnni'),
    amx: x86('amx_int8', 'amx_tile'),
    // Every arm64 ABI requires Advanced SIMD, and Node's arm64 build needs it; 32-bit ARM says "neon".
    neon: arch === 'arm64' || arm('asimd', 'neon'),
    dotprod: arm('asimddp'),
    i8mm: arm('i8mm'),
    sve: arm('sve'),
  };
}

/** ARM "CPU implementer" codes (Linux arch/arm64/include/asm/cputype.h). */
const ARM_IMPLEMENTERS: Record<number, string> = {
  0x41: 'ARM',
  0x42: 'Broadcom',
  0x43: 'Cavium',
  0x46: 'Fujitsu',
  0x48: 'HiSilicon',
  0x4e: 'NVIDIA',
  0x51: 'Qualcomm',
  0x61: 'Apple',
  0x6d: 'Microsoft',
  0xc0: 'Ampere',
};

/** "CPU part" codes of common cores, by implementer. */
const ARM_PARTS: Record<number, Record<number, string>> = {
  0x41: {
    0xd03: 'Cortex-A53',
    0xd04: 'Cortex-A35',
    0xd05: 'Cortex-A55',
    0xd07: 'Cortex-A57',
    0xd08: 'Cortex-A72',
    0xd09: 'Cortex-A73',
    0xd0a: 'Cortex-A75',
    0xd0b: 'Cortex-A76',
    0xd0c: 'Neoverse-N1',
    0xd0d: 'Cortex-A77',
    0xd40: 'Neoverse-V1',
    0xd41: 'Cortex-A78',
    0xd44: 'Cortex-X1',
    0xd46: 'Cortex-A510',
    0xd47: 'Cortex-A710',
    0xd48: 'Cortex-X2',
    0xd49: 'Neoverse-N2',
    0xd4f: 'Neoverse-V2',
  },
  0x61: {
    0x022: 'Apple M1 Icestorm',
    0x023: 'Apple M1 Firestorm',
    0x024: 'Apple M1 Pro Icestorm',
    0x025: 'Apple M1 Pro Firestorm',
    0x028: 'Apple M1 Max Icestorm',
    0x029: 'Apple M1 Max Firestorm',
    0x032: 'Apple M2 Blizzard',
    0x033: 'Apple M2 Avalanche',
  },
  0x6d: { 0xd49: 'Azure Cobalt 100 (Neoverse-N2)' },
  0xc0: { 0xac3: 'AmpereOne' },
};

const X86_VENDORS: Record<string, string> = {
  GenuineIntel: 'Intel',
  AuthenticAMD: 'AMD',
  HygonGenuine: 'Hygon',
  CentaurHauls: 'Centaur',
  Shanghai: 'Zhaoxin',
};

type Block = Map<string, string>;

/** Splits cpuinfo into blocks of `key : value` lines (keys keep their case: "Model" ≠ "model"). */
function blocks(text: string): Block[] {
  const out: Block[] = [];
  let cur: Block = new Map();
  for (const line of text.split(/\r?\n/)) {
    if (!line.trim()) {
      if (cur.size) out.push(cur);
      cur = new Map();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const key = line.slice(0, colon).trim();
    if (key && !cur.has(key)) cur.set(key, line.slice(colon + 1).trim());
  }
  if (cur.size) out.push(cur);
  return out;
}

function first(bs: Block[], key: string): string {
  for (const b of bs) {
    const v = b.get(key);
    if (v) return v;
  }
  return '';
}

function hexOrNaN(s: string | undefined): number {
  return s && /^0x[0-9a-f]+$/i.test(s) ? parseInt(s, 16) : NaN;
}

function intOrNaN(s: string | undefined): number {
  return s && /^\d+$/.test(s) ? parseInt(s, 10) : NaN;
}

/** x86: distinct (physical id, core id) pairs; else logical × "cpu cores" / "siblings". */
function x86PhysicalCores(procs: Block[], logical: number): number | null {
  const pairs = new Set<string>();
  let complete = procs.length > 0;
  for (const b of procs) {
    const pid = b.get('physical id');
    const cid = b.get('core id');
    if (pid === undefined || cid === undefined) complete = false;
    else pairs.add(`${pid}/${cid}`);
  }
  if (complete && pairs.size) return pairs.size;
  const coresPerSocket = intOrNaN(first(procs, 'cpu cores'));
  const threadsPerSocket = intOrNaN(first(procs, 'siblings'));
  if (logical > 0 && coresPerSocket > 0 && threadsPerSocket >= coresPerSocket) {
    return Math.max(1, Math.round((logical * coresPerSocket) / threadsPerSocket));
  }
  return null;
}

function armModel(procs: Block[], all: Block[]): { model: string; vendor: string } {
  // Distinct cores in order of appearance: big.LITTLE systems list both kinds.
  const names: string[] = [];
  let vendor = '';
  for (const b of procs) {
    const imp = hexOrNaN(b.get('CPU implementer'));
    const part = hexOrNaN(b.get('CPU part'));
    if (Number.isNaN(imp)) continue;
    vendor ||= ARM_IMPLEMENTERS[imp] ?? `implementer 0x${imp.toString(16)}`;
    const name = Number.isNaN(part)
      ? ''
      : (ARM_PARTS[imp]?.[part] ?? `${ARM_IMPLEMENTERS[imp] ?? `implementer 0x${imp.toString(16)}`} part 0x${part.toString(16).padStart(3, '0')}`);
    if (name && !names.includes(name)) names.push(name);
  }
  // 32-bit kernels and compat readers print "model name : ARMv7 Processor rev 3 (v7l)";
  // very old ones "Processor : …". A known part says more.
  const model = names.join(' + ') || first(all, 'model name') || first(all, 'Processor');
  return { model, vendor };
}

/** Everything /proc/cpuinfo says about the CPU. Never throws; unknown parts stay empty. */
export function parseCpuinfo(cpuinfo: string, arch: string): CpuFacts {
  const text = typeof cpuinfo === 'string' ? cpuinfo : '';
  const all = blocks(text);
  const procs = all.filter((b) => /^\d+$/.test(b.get('processor') ?? ''));
  const logical = (text.match(/^processor[ \t]*:[ \t]*\d+[ \t]*$/gm) ?? []).length;
  const flags = parseCpuFlags(text);
  const fam = archFamily(arch);
  let model = '';
  let vendor = '';
  let physical: number | null = null;
  if (fam === 'arm') {
    ({ model, vendor } = armModel(procs.length ? procs : all, all));
  } else {
    model = first(all, 'model name') || first(all, 'cpu') || first(all, 'uarch');
    const vid = first(all, 'vendor_id');
    vendor = X86_VENDORS[vid] ?? (vid.trim() || first(all, 'vendor'));
    if (fam === 'x86') physical = x86PhysicalCores(procs, logical);
  }
  return {
    arch,
    model: model.replace(/\s+/g, ' ').trim(),
    vendor,
    cores: { logical, physical },
    flags,
    isa: isaFromFlags(flags, arch),
  };
}

function readCpuinfo(): string {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return ''; // not Linux: the architecture alone decides
  }
}

/** This machine, from /proc/cpuinfo and node:os only (synchronous, no child processes). */
export function localCpu(): CpuFacts {
  const cpu = parseCpuinfo(readCpuinfo(), osArch());
  const os = cpus();
  if (!cpu.cores.logical) cpu.cores.logical = os.length;
  if (!cpu.model && os[0]?.model && os[0].model !== 'unknown') cpu.model = os[0].model.replace(/\s+/g, ' ').trim();
  return cpu;
}

/**
 * This machine, with what cpuinfo lacks filled in from systeminformation (brand and physical
 * cores on macOS and Windows, physical cores on ARM). cpuinfo always wins, and the ISA summary
 * and profile are always those of `localCpu()`.
 */
export async function localCpuAsync(timeoutMs = 5000): Promise<CpuFacts> {
  const cpu = localCpu();
  const missing = !cpu.model || !cpu.vendor || cpu.cores.physical === null || !cpu.cores.logical;
  if (!missing) return cpu;
  let si: Systeminformation.CpuData | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    const mod = await import('systeminformation');
    const timeout = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), timeoutMs);
      timer.unref();
    });
    si = await Promise.race([mod.default.cpu(), timeout]);
  } catch {
    si = undefined; // systeminformation is a convenience; cpuinfo and os.arch() still decide
  } finally {
    clearTimeout(timer);
  }
  return si ? fillFromSystemInformation(cpu, si) : cpu;
}

/** What systeminformation's `cpu()` gives that `fillFromSystemInformation` reads. */
export type SiCpu = Pick<Systeminformation.CpuData, 'manufacturer' | 'brand' | 'vendor' | 'cores' | 'physicalCores'>;

/** Fills only the blanks of `cpu` (mutated and returned) from systeminformation's answer. */
export function fillFromSystemInformation(cpu: CpuFacts, si: SiCpu): CpuFacts {
  if (!cpu.model && si.brand) cpu.model = [si.manufacturer, si.brand].filter((s) => s).join(' ');
  if (!cpu.vendor && (si.manufacturer || si.vendor)) cpu.vendor = si.manufacturer || si.vendor;
  if (cpu.cores.physical === null && si.physicalCores > 0) cpu.cores.physical = si.physicalCores;
  if (!cpu.cores.logical && si.cores > 0) cpu.cores.logical = si.cores;
  // Flags are not taken: off Linux systeminformation reports only CPUID leaf 1 (macOS sysctl
  // machdep.cpu.features, Windows FeatureSet), which never shows AVX2 or VNNI, so it would turn
  // "flags unknown" into a false "no AVX2". On Linux it reads the same cpuinfo we do.
  return cpu;
}

export interface ProfileChoice {
  profile: Profile;
  reason: string;
}

/** What `chooseProfile` needs: the arch, and the ISA summary or the flags to derive it from. */
export type CpuLike = Pick<CpuFacts, 'arch'> & { flags?: ReadonlySet<string>; isa?: IsaSummary };

const SATURATES = 'reduce_range (7-bit weights: u8×s8 saturates without VNNI)';

export function chooseProfile(cpu: CpuLike): ProfileChoice {
  const flags = cpu.flags ?? new Set<string>();
  const isa = cpu.isa ?? isaFromFlags(flags, cpu.arch);
  const known = cpu.flags ? cpu.flags.size > 0 : cpu.isa !== undefined;
  const fam = archFamily(cpu.arch);
  if (fam === 'arm') {
    const label = cpu.arch === 'arm64' ? 'arm64' : '32-bit ARM';
    let what: string;
    if (!known) what = `${label}, CPU features unknown`;
    else if (isa.dotprod && isa.i8mm) what = `${label} with dotprod and i8mm`;
    else if (isa.dotprod) what = `${label} with dotprod, no i8mm`;
    else if (isa.i8mm) what = `${label} with i8mm, no dotprod`;
    else what = `${label} with ${isa.neon ? 'NEON' : 'no NEON'}, no dotprod or i8mm`;
    return { profile: profileWith('qnnpack'), reason: `${what}: qnnpack, per-tensor, no reduce_range` };
  }
  if (fam === 'x86') {
    const label = cpu.arch === 'ia32' ? 'x86 (32-bit)' : 'x86-64';
    if (isa.avx512vnni || isa.avxvnni) {
      const what = isa.avx512vnni ? `AVX-512 VNNI${isa.amx ? ' and AMX' : ''}` : 'AVX-VNNI';
      return { profile: profileWith('fbgemm'), reason: `${label} with ${what}: fbgemm, per-channel, no reduce_range` };
    }
    let what: string;
    if (!known) what = `${label}, CPU flags unknown (assuming no VNNI)`;
    else if (isa.avx512f) what = `${label} with AVX-512, no VNNI`;
    else if (isa.avx2) what = `${label} with AVX2, no VNNI`;
    else what = `${label} without AVX2 or VNNI`;
    return { profile: profileWith('fbgemm', { reduceRange: true }), reason: `${what}: fbgemm, per-channel, ${SATURATES}` };
  }
  return {
    profile: profileWith('fbgemm', { reduceRange: true }),
    reason: `${cpu.arch}: no profile made for it; fbgemm, per-channel, reduce_range (7-bit weights cannot saturate whatever the int8 kernels do)`,
  };
}

export function defaultProfileName(cpu: CpuLike): keyof typeof PROFILES {
  return chooseProfile(cpu).profile.name;
}

/** The ISA features present, in ISA_KEYS order. */
export function presentIsa(isa: IsaSummary): (keyof IsaSummary)[] {
  return ISA_KEYS.filter((k) => isa[k]);
}
