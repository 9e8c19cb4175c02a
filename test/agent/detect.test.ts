import test from 'ava';
import { readFileSync } from 'node:fs';
import { arch as osArch, cpus } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  archFamily,
  chooseProfile,
  defaultProfileName,
  fillFromSystemInformation,
  localCpu,
  localCpuAsync,
  parseCpuinfo,
  type ArchFamily,
  type IsaSummary,
} from '../../agent/detect.js';
import { CLI, ROOT } from '../helpers/fixtures.js';

const FIXTURES = join(ROOT, 'test/fixtures/cpuinfo');
const NO_ISA: IsaSummary = { avx2: false, avx512f: false, avx512vnni: false, avxvnni: false, amx: false, neon: false, dotprod: false, i8mm: false, sve: false };

interface Case {
  file: string;
  arch: string;
  family: ArchFamily;
  model: string;
  vendor: string;
  physical: number | null;
  isa: Partial<IsaSummary>;
  profile: 'fbgemm' | 'qnnpack';
  perChannel: boolean;
  reduceRange: boolean;
  reason: RegExp;
}

const CASES: Case[] = [
  {
    file: 'intel-skylake-i7-6700.txt',
    arch: 'x64',
    family: 'x86',
    model: 'Intel(R) Core(TM) i7-6700 CPU @ 3.40GHz',
    vendor: 'Intel',
    physical: 1, // 2 listed processors × 4 cores / 8 siblings
    isa: { avx2: true },
    profile: 'fbgemm',
    perChannel: true,
    reduceRange: true,
    reason: /^x86-64 with AVX2, no VNNI: fbgemm, per-channel, reduce_range \(7-bit weights: u8×s8 saturates without VNNI\)$/,
  },
  {
    file: 'intel-xeon-8275cl-cascadelake.txt',
    arch: 'x64',
    family: 'x86',
    model: 'Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz',
    vendor: 'Intel',
    physical: 1,
    isa: { avx2: true, avx512f: true, avx512vnni: true },
    profile: 'fbgemm',
    perChannel: true,
    reduceRange: false,
    reason: /^x86-64 with AVX-512 VNNI: fbgemm, per-channel, no reduce_range$/,
  },
  {
    file: 'amd-epyc-zen-this-machine.txt',
    arch: 'x64',
    family: 'x86',
    model: 'AMD EPYC',
    vendor: 'AMD',
    physical: 2,
    isa: { avx2: true },
    profile: 'fbgemm',
    perChannel: true,
    reduceRange: true,
    reason: /^x86-64 with AVX2, no VNNI: /,
  },
  {
    file: 'rpi4-cortex-a72.txt',
    arch: 'arm64',
    family: 'arm',
    model: 'Cortex-A72',
    vendor: 'ARM',
    physical: null,
    isa: { neon: true },
    profile: 'qnnpack',
    perChannel: false,
    reduceRange: false,
    reason: /^arm64 with NEON, no dotprod or i8mm: qnnpack, per-tensor, no reduce_range$/,
  },
  {
    file: 'graviton2-neoverse-n1.txt',
    arch: 'arm64',
    family: 'arm',
    model: 'Neoverse-N1',
    vendor: 'ARM',
    physical: null,
    isa: { neon: true, dotprod: true },
    profile: 'qnnpack',
    perChannel: false,
    reduceRange: false,
    reason: /^arm64 with dotprod, no i8mm: qnnpack, per-tensor, no reduce_range$/,
  },
  {
    file: 'graviton3-neoverse-v1.txt',
    arch: 'arm64',
    family: 'arm',
    model: 'Neoverse-V1',
    vendor: 'ARM',
    physical: null,
    isa: { neon: true, dotprod: true, i8mm: true, sve: true },
    profile: 'qnnpack',
    perChannel: false,
    reduceRange: false,
    reason: /^arm64 with dotprod and i8mm: qnnpack, per-tensor, no reduce_range$/,
  },
];

for (const c of CASES) {
  test(`recorded cpuinfo ${c.file}: ${c.profile}${c.reduceRange ? ' reduce_range' : ''}`, (t) => {
    const cpu = parseCpuinfo(readFileSync(join(FIXTURES, c.file), 'utf8'), c.arch);
    t.is(cpu.arch, c.arch);
    t.is(archFamily(cpu.arch), c.family);
    t.is(cpu.model, c.model);
    t.is(cpu.vendor, c.vendor);
    t.deepEqual(cpu.cores, { logical: 2, physical: c.physical });
    t.deepEqual(cpu.isa, { ...NO_ISA, ...c.isa });
    const { profile, reason } = chooseProfile(cpu);
    t.is(profile.name, c.profile);
    t.is(profile.perChannel, c.perChannel);
    t.is(profile.reduceRange, c.reduceRange);
    t.regex(reason, c.reason);
    t.is(defaultProfileName(cpu), c.profile);
  });
}

test('x86 flags come from the "flags" line, not "vmx flags" or "bugs"', (t) => {
  const cpu = parseCpuinfo(readFileSync(join(FIXTURES, 'intel-skylake-i7-6700.txt'), 'utf8'), 'x64');
  t.true(cpu.flags.has('avx2'));
  t.true(cpu.flags.has('fma'));
  t.false(cpu.flags.has('preemption_timer')); // vmx flags
  t.false(cpu.flags.has('cpu_meltdown')); // bugs
});

test('the Raspberry Pi board lines ("Model", "Revision") are not the CPU model', (t) => {
  const cpu = parseCpuinfo(readFileSync(join(FIXTURES, 'rpi4-cortex-a72.txt'), 'utf8'), 'arm64');
  t.is(cpu.model, 'Cortex-A72');
  t.false(cpu.flags.has('asimddp'));
});

test('ARM cores are named from CPU implementer/part, big.LITTLE lists each kind once', (t) => {
  const block = (i: number, imp: string, part: string, feats = 'fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp') =>
    `processor\t: ${i}\nBogoMIPS\t: 48.00\nFeatures\t: ${feats}\nCPU implementer\t: ${imp}\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: ${part}\nCPU revision\t: 0\n`;
  const rk3588 = [0, 1, 2, 3].map((i) => block(i, '0x41', '0xd05')).concat([4, 5, 6, 7].map((i) => block(i, '0x41', '0xd0b'))).join('\n');
  const a = parseCpuinfo(rk3588, 'arm64');
  t.is(a.model, 'Cortex-A55 + Cortex-A76');
  t.is(a.vendor, 'ARM');
  t.is(a.cores.logical, 8);
  t.true(a.isa.dotprod);

  // Asahi Linux on an Apple M1: Icestorm (efficiency) and Firestorm (performance) cores.
  const m1 = [block(0, '0x61', '0x022', 'fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 asimddp sha512 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp flagm2 frint'), block(1, '0x61', '0x023')].join('\n');
  const m = parseCpuinfo(m1, 'arm64');
  t.is(m.model, 'Apple M1 Icestorm + Apple M1 Firestorm');
  t.is(m.vendor, 'Apple');
  t.true(m.isa.dotprod);
  t.false(m.isa.i8mm);
  t.regex(chooseProfile(m).reason, /^arm64 with dotprod, no i8mm: qnnpack/);

  for (const [imp, part, name] of [['0x41', '0xd03', 'Cortex-A53'], ['0x41', '0xd08', 'Cortex-A72'], ['0x41', '0xd0c', 'Neoverse-N1'], ['0x41', '0xd40', 'Neoverse-V1'], ['0x41', '0xd49', 'Neoverse-N2']]) {
    t.is(parseCpuinfo(block(0, imp, part), 'arm64').model, name, part);
  }
  t.is(parseCpuinfo(block(0, '0x41', '0xd99'), 'arm64').model, 'ARM part 0xd99');
  t.is(parseCpuinfo(block(0, '0x99', '0x001'), 'arm64').vendor, 'implementer 0x99');
});

test('32-bit ARM: "model name" and "neon" in Features, qnnpack', (t) => {
  const text =
    'processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nBogoMIPS\t: 108.00\n' +
    'Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\n' +
    'CPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n';
  const cpu = parseCpuinfo(text, 'arm');
  t.is(cpu.model, 'Cortex-A72');
  t.deepEqual(cpu.isa, { ...NO_ISA, neon: true });
  t.is(chooseProfile(cpu).profile.name, 'qnnpack');
  t.regex(chooseProfile(cpu).reason, /^32-bit ARM with NEON/);
  // No implementer lines: the model name stands.
  t.is(parseCpuinfo('processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nFeatures\t: neon\n', 'arm').model, 'ARMv7 Processor rev 5 (v7l)');
});

test('empty or garbage cpuinfo does not throw and falls back to the architecture', (t) => {
  const garbage = [
    '',
    '\n\n\n',
    ':::::\n: : :\nprocessor : x\nflags\n',
    '\u0000\u0001\u0002binary\uFFFD\r\n\r\n',
    Array.from({ length: 2000 }, (_, i) => `k${i}${':'.repeat(i % 7)}${' '.repeat(i % 13)}v`).join('\n'),
  ];
  for (const text of garbage) {
    const x = parseCpuinfo(text, 'x64');
    t.deepEqual(x.isa, NO_ISA);
    t.is(x.cores.logical, 0);
    const cx = chooseProfile(x);
    t.is(cx.profile.name, 'fbgemm');
    t.true(cx.profile.reduceRange, 'no VNNI seen: 7-bit weights are the safe choice');
    t.regex(cx.reason, /^x86-64, CPU flags unknown \(assuming no VNNI\): fbgemm, per-channel, reduce_range/);

    const a = parseCpuinfo(text, 'arm64');
    t.deepEqual(a.isa, { ...NO_ISA, neon: true });
    const ca = chooseProfile(a);
    t.is(ca.profile.name, 'qnnpack');
    t.false(ca.profile.reduceRange);
    t.regex(ca.reason, /^arm64, CPU features unknown: qnnpack/);

    const o = chooseProfile(parseCpuinfo(text, 'riscv64'));
    t.is(o.profile.name, 'fbgemm');
    t.true(o.profile.reduceRange);
    t.regex(o.reason, /^riscv64: /);
  }
  t.notThrows(() => parseCpuinfo(undefined as unknown as string, 'x64'));
});

test('the arch gates the flag families: x86 cpuinfo read as arm64 has no AVX', (t) => {
  const cpu = parseCpuinfo(readFileSync(join(FIXTURES, 'intel-xeon-8275cl-cascadelake.txt'), 'utf8'), 'arm64');
  t.deepEqual(cpu.isa, { ...NO_ISA, neon: true });
  t.is(chooseProfile(cpu).profile.name, 'qnnpack');
});

test('chooseProfile takes {arch, flags} alone and knows AVX-VNNI, AMX and AVX-512 without VNNI', (t) => {
  const pick = (flags: string[]) => chooseProfile({ arch: 'x64', flags: new Set(flags) });
  t.false(pick(['avx2', 'avx_vnni']).profile.reduceRange);
  t.is(pick(['avx2', 'avx_vnni']).reason, 'x86-64 with AVX-VNNI: fbgemm, per-channel, no reduce_range');
  t.is(pick(['avx2', 'avx512f', 'avx512_vnni', 'amx_tile', 'amx_int8']).reason, 'x86-64 with AVX-512 VNNI and AMX: fbgemm, per-channel, no reduce_range');
  t.true(pick(['avx2', 'avx512f']).profile.reduceRange);
  t.regex(pick(['avx2', 'avx512f']).reason, /^x86-64 with AVX-512, no VNNI: .*reduce_range/);
  t.regex(pick(['sse4_2']).reason, /^x86-64 without AVX2 or VNNI: /);
  t.true(pick(['sse4_2']).profile.reduceRange);
});

test('systeminformation fills only what cpuinfo lacks', (t) => {
  const pi = parseCpuinfo(readFileSync(join(FIXTURES, 'rpi4-cortex-a72.txt'), 'utf8'), 'arm64');
  const filled = fillFromSystemInformation(pi, { manufacturer: 'ARM', brand: 'Cortex-A53', vendor: 'ARM', cores: 4, physicalCores: 4 });
  t.deepEqual(filled.cores, { logical: 2, physical: 4 }); // cpuinfo's count stands; physical was unknown
  t.is(filled.model, 'Cortex-A72', "cpuinfo's model wins");

  // No /proc/cpuinfo (macOS on Apple silicon): brand, cores and the arch-only decision.
  const mac = fillFromSystemInformation(parseCpuinfo('', 'arm64'), { manufacturer: 'Apple', brand: 'M2', vendor: 'Apple', cores: 8, physicalCores: 8 });
  t.is(mac.model, 'Apple M2');
  t.is(mac.vendor, 'Apple');
  t.deepEqual(mac.cores, { logical: 8, physical: 8 });
  t.is(chooseProfile(mac).profile.name, 'qnnpack');

  t.is(chooseProfile(mac).reason, 'arm64, CPU features unknown: qnnpack, per-tensor, no reduce_range');
});

test('localCpu on this machine: os.arch(), all logical CPUs, the ISA of its flags', async (t) => {
  const cpu = localCpu();
  t.is(cpu.arch, osArch());
  t.is(cpu.cores.logical, cpus().length);
  const again = await localCpuAsync();
  t.deepEqual(again.isa, cpu.isa);
  t.is(chooseProfile(again).reason, chooseProfile(cpu).reason);
});

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('CLI: detect --json prints one object that agrees with chooseProfile(localCpu())', (t) => {
  const r = cli(['detect', '--json']);
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  const cpu = localCpu();
  const { profile, reason } = chooseProfile(cpu);
  t.deepEqual(Object.keys(j), ['arch', 'model', 'vendor', 'cores', 'flags', 'isa', 'profile', 'reason']);
  t.is(j.arch, osArch());
  t.deepEqual(j.isa, cpu.isa);
  t.deepEqual(j.profile, { name: profile.name, perChannel: profile.perChannel, reduceRange: profile.reduceRange, activations: profile.activations, method: profile.method });
  t.is(j.reason, reason);
  t.deepEqual(j.flags, [...cpu.flags]);
  t.is(j.cores.logical, cpus().length);
  t.true(j.cores.physical === null || (Number.isInteger(j.cores.physical) && j.cores.physical >= 1));
});

test('CLI: detect prints aligned lines ending with the profile and its reason', (t) => {
  const r = cli(['detect']);
  t.is(r.status, 0, r.stderr);
  const { profile, reason } = chooseProfile(localCpu());
  t.regex(r.stdout, new RegExp(`^profile +${profile.name} \\((per-channel|per-tensor) weights`, 'm'));
  t.true(r.stdout.includes(`\nreason   ${reason}\n`));
  for (const key of ['arch', 'model', 'cores', 'isa']) t.regex(r.stdout, new RegExp(`^${key} +\\S`, 'm'));
  t.is(r.stderr, '');
});

test('CLI: detect rejects unknown options as a usage error', (t) => {
  const r = cli(['detect', '--bogus', '--json']);
  t.is(r.status, 2);
  t.is(JSON.parse(r.stdout).error.code, 'E_USAGE');
});
