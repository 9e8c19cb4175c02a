/** `edgeq detect`: this CPU's int8-relevant features and the quantization profile they call for. */
import type { Argv } from 'yargs';
import { chooseProfile, localCpuAsync, presentIsa, type CpuFacts, type IsaSummary } from '../detect.js';
import { printJson, reportError } from '../output.js';
import type { ActivationType, CalibrationMethod, ProfileName } from '../../quant/profiles.js';

export interface DetectArgs {
  json: boolean;
}

/** The `--json` object. */
export interface DetectReport {
  arch: string;
  model: string;
  vendor: string;
  cores: { logical: number; physical: number | null };
  flags: string[];
  isa: IsaSummary;
  profile: { name: ProfileName; perChannel: boolean; reduceRange: boolean; activations: ActivationType; method: CalibrationMethod };
  reason: string;
}

export function detectCommand(y: Argv): Argv {
  return y.command(
    'detect',
    "Show this CPU's int8-relevant features and the quantization profile it gets",
    (b) =>
      b
        .usage(
          'edgeq detect [--json]\n\n' +
            'Reads /proc/cpuinfo and the architecture (systeminformation fills what cpuinfo lacks) and\n' +
            'prints the ISA features that matter to ONNX Runtime int8 kernels (AVX2, AVX-512, VNNI, AMX;\n' +
            'NEON, dotprod, i8mm, SVE) and the profile `edgeq quantize --profile auto` would use.',
        )
        .option('json', { type: 'boolean', default: false, describe: 'print one JSON object' })
        .example('edgeq detect --json', 'arch, model, cores, flags, ISA summary, profile and reason as JSON'),
    async (argv) => {
      await runDetect(argv as unknown as DetectArgs);
    },
  );
}

export function detectReport(cpu: CpuFacts): DetectReport {
  const { profile, reason } = chooseProfile(cpu);
  return {
    arch: cpu.arch,
    model: cpu.model,
    vendor: cpu.vendor,
    cores: { logical: cpu.cores.logical, physical: cpu.cores.physical },
    flags: [...cpu.flags],
    isa: { ...cpu.isa },
    profile: { name: profile.name, perChannel: profile.perChannel, reduceRange: profile.reduceRange, activations: profile.activations, method: profile.method },
    reason,
  };
}

export function formatDetect(r: DetectReport): string {
  const cores = r.cores.logical ? `${r.cores.logical} logical${r.cores.physical !== null ? `, ${r.cores.physical} physical` : ''}` : 'unknown';
  const p = r.profile;
  const rows: [string, string][] = [
    ['arch', r.arch],
    ['model', r.model || 'unknown'],
    ['vendor', r.vendor || 'unknown'],
    ['cores', cores],
    ['isa', presentIsa(r.isa).join(' ') || 'none of the int8-relevant features'],
    ['profile', `${p.name} (${p.perChannel ? 'per-channel' : 'per-tensor'} weights${p.reduceRange ? ', reduce_range' : ''}, ${p.activations} activations, ${p.method} observer)`],
    ['reason', r.reason],
  ];
  const w = Math.max(...rows.map(([k]) => k.length)) + 2;
  return rows.map(([k, v]) => k.padEnd(w) + v).join('\n') + '\n';
}

export async function runDetect(args: DetectArgs): Promise<void> {
  try {
    const report = detectReport(await localCpuAsync());
    if (args.json) printJson(report);
    else process.stdout.write(formatDetect(report));
  } catch (e) {
    reportError(e, args.json);
  }
}
