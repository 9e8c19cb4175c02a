/**
 * The work behind the fleet's queued commands — optimize, quantize, eval, bench, import — on the
 * models and samples in the store. Each records a run in the store, reports progress through
 * its context, and stops at its next progress point once its signal is aborted (E_CANCELLED).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { benchInChild } from '../../quant/bench-process.js';
import { EdgeqError, isEdgeqError } from '../../quant/errors.js';
import { evaluate } from '../../quant/evaluate.js';
import { isProfileName, profileWith, quantize, type CalibrationMethod, type QuantizeOptions } from '../../quant/index.js';
import { importNpy } from '../capture/import.js';
import type { DeployConfig, QuantizeConfig } from '../config.js';
import { activateVersion, deployManifest, resolveVersionRef, rollbackModel } from '../deploy.js';
import { parseManifest } from '../../deploy/manifest.js';
import { chooseProfile, type CpuFacts } from '../detect.js';
import { fp32Version, storeData, type StoreData } from '../from-store.js';
import { registerModel } from '../models.js';
import { optimizeFromStore } from '../optimize.js';
import type { Command } from '../protocol/messages.js';
import type { Report } from '../protocol/report.js';
import type { ModelVersion, Store } from '../store/index.js';
import { checkFileSize, checkSource, download } from './import-source.js';

export interface JobContext {
  store: Store;
  stateDir: string;
  deviceId: string;
  cpu: CpuFacts;
  quantize: QuantizeConfig;
  threads?: number;
  importCfg: { allow: string[]; maxBytes: number };
  deployCfg: DeployConfig;
  signal: AbortSignal;
  /** Reports progress (0..1 over the whole job). */
  progress(stage: string, fraction: number): void;
  /** The run the job records, as soon as it exists. */
  onRun(runId: string): void;
}

export interface JobOutcome {
  result: Record<string, unknown>;
  /** Sent on the report topic. */
  report?: Report;
}

export type JobType = 'optimize' | 'quantize' | 'eval' | 'bench' | 'import' | 'deploy' | 'activate' | 'rollback';
export const JOB_TYPES: ReadonlySet<string> = new Set<JobType>(['optimize', 'quantize', 'eval', 'bench', 'import', 'deploy', 'activate', 'rollback']);

/** Throws E_CANCELLED when the job's signal was aborted. */
export function checkAbort(signal: AbortSignal): void {
  if (!signal.aborted) return;
  throw new EdgeqError('E_CANCELLED', signal.reason === 'shutdown' ? 'stopped: the agent is shutting down; the job runs again when it starts' : 'cancelled by a cancel command');
}

/** JSON has no Infinity or NaN: they travel as null. */
export function jsonSafe<T>(value: T): T {
  return JSON.parse(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v))) as T;
}

type QuantizeWire = Command<'quantize'>['args'];

/** quantize() options from the command's arguments over the config's quantize section over the CPU's profile. */
export function quantizeSettings(args: Partial<QuantizeWire>, cfg: QuantizeConfig, cpu: CpuFacts, threads?: number): { options: Omit<QuantizeOptions, 'model' | 'calib' | 'out'>; reason: string } {
  const name = args.profile ?? cfg.profile ?? 'auto';
  let profile;
  let reason: string;
  if (name === 'auto') ({ profile, reason } = chooseProfile(cpu));
  else if (isProfileName(name)) {
    profile = profileWith(name);
    reason = args.profile ? `profile ${name} asked for by the command` : `profile ${name} from the config`;
  } else throw new EdgeqError('E_ARGUMENT', `unknown profile ${String(name)}`);
  if (cfg.perChannel !== undefined) profile.perChannel = cfg.perChannel;
  if (cfg.reduceRange !== undefined) profile.reduceRange = cfg.reduceRange;
  if (cfg.activations) profile.activations = cfg.activations;
  if (cfg.bins !== undefined) profile.bins = cfg.bins;
  if (args.perChannel !== undefined) profile.perChannel = args.perChannel;
  if (args.reduceRange !== undefined) profile.reduceRange = args.reduceRange;
  return {
    options: {
      profile,
      method: (args.method ?? cfg.method) as CalibrationMethod | 'auto' | undefined,
      percentile: args.percentile ?? cfg.percentile,
      maxDrop: args.maxDrop ?? cfg.maxDrop,
      biasCorrection: args.biasCorrection ?? cfg.biasCorrection,
      calibCount: args.calibCount,
      threads,
    },
    reason,
  };
}

/** Records a run of `kind` around `fn`: succeeded with its result, or failed / cancelled with its error. */
async function inRun<T extends Record<string, unknown>>(ctx: JobContext, kind: string, params: unknown, fn: (runId: string) => Promise<T>): Promise<T & { runId: string }> {
  const run = ctx.store.createRun(kind, params);
  ctx.onRun(run.id);
  ctx.store.startRun(run.id);
  try {
    const result = jsonSafe({ ...(await fn(run.id)), runId: run.id });
    ctx.store.finishRun(run.id, result);
    return result;
  } catch (e) {
    const code = isEdgeqError(e) ? e.code : 'E_INTERNAL';
    try {
      ctx.store.failRun(run.id, { code, message: e instanceof Error ? e.message : String(e) }, code === 'E_CANCELLED' ? 'cancelled' : 'failed');
    } catch {
      // the error is the news
    }
    throw e;
  }
}

/** The version a command names, else the active one. */
function versionOf(store: Store, name: string, version?: number): ModelVersion {
  if (!store.hasModel(name)) throw new EdgeqError('E_MODEL_UNKNOWN', `no model "${name}" on this device`);
  const v = version !== undefined ? store.getVersion(name, version) : store.activeVersion(name);
  if (!v) throw new EdgeqError('E_MODEL_UNKNOWN', version !== undefined ? `model "${name}" has no version ${version}` : `model "${name}" has no active version`);
  return v;
}

/** The held-out split when it has samples, else the calibration split. */
function evalData(store: Store, name: string): { data: StoreData; split: 'holdout' | 'calibration' } {
  const split = store.countSamples(name, 'holdout') > 0 ? 'holdout' : 'calibration';
  return { data: storeData(store, name, { [split]: true }), split };
}

export async function runJob(cmd: Command, ctx: JobContext): Promise<JobOutcome> {
  switch (cmd.type) {
    case 'optimize':
      return optimizeJob(cmd as Command<'optimize'>, ctx);
    case 'quantize':
      return quantizeJob(cmd as Command<'quantize'>, ctx);
    case 'eval':
      return evalJob(cmd as Command<'eval'>, ctx);
    case 'bench':
      return benchJob(cmd as Command<'bench'>, ctx);
    case 'import':
      return importJob(cmd as Command<'import'>, ctx);
    case 'deploy':
      return deployJob(cmd as Command<'deploy'>, ctx);
    case 'activate':
    case 'rollback':
      return switchJob(cmd as Command<'activate'> | Command<'rollback'>, ctx);
    default:
      throw new EdgeqError('E_COMMAND_UNKNOWN', `${cmd.type} is not a job`);
  }
}

async function optimizeJob(cmd: Command<'optimize'>, ctx: JobContext): Promise<JobOutcome> {
  const { runs, benchThreads, ...qargs } = cmd.args;
  const { options, reason } = quantizeSettings(qargs, ctx.quantize, ctx.cpu, ctx.threads);
  const stages = { quantize: 0, eval: 1, bench: 2 } as const;
  checkAbort(ctx.signal);
  const o = await optimizeFromStore(ctx.store, ctx.stateDir, cmd.args.model, {
    quantize: options,
    reason,
    benchThreads: benchThreads ?? 1,
    runs: runs ?? 100,
    warmup: Math.min(10, runs ?? 100),
    deviceId: ctx.deviceId,
    onRun: ctx.onRun,
    keepVersions: ctx.deployCfg.keepVersions,
    // The accuracy budget of the config (or the command) is also the promotion gate's.
    ...(options.maxDrop !== undefined ? { budget: { maxDropPoints: options.maxDrop } } : {}),
    onStage: (stage, done, total) => {
      checkAbort(ctx.signal);
      ctx.progress(stage, (stages[stage] + (total ? done / total : 0)) / 3);
    },
  });
  const r = o.report;
  return {
    report: r,
    result: jsonSafe({
      runId: o.runId,
      int8Version: o.int8Version,
      reportId: r.id,
      summary: {
        model: r.model.name,
        int8: r.int8.name,
        profile: r.quantization.profile,
        method: r.quantization.method,
        speedup: r.latency.speedup,
        sizeRatio: r.sizeRatio,
        ...(r.accuracy.fp32Top1 !== undefined ? { fp32Top1: r.accuracy.fp32Top1 } : {}),
        ...(r.accuracy.int8Top1 !== undefined ? { int8Top1: r.accuracy.int8Top1 } : {}),
        ...(r.accuracy.dropPoints !== undefined ? { dropPoints: r.accuracy.dropPoints } : {}),
        ...(r.accuracy.agreement !== undefined ? { agreement: r.accuracy.agreement } : {}),
        sqnrDb: r.accuracy.sqnrDb,
      },
    }),
  };
}

async function quantizeJob(cmd: Command<'quantize'>, ctx: JobContext): Promise<JobOutcome> {
  const { options, reason } = quantizeSettings(cmd.args, ctx.quantize, ctx.cpu, ctx.threads);
  const name = cmd.args.model;
  const result = await inRun(ctx, 'quantize', { model: name, quantize: { ...options, profile: options.profile.name } }, async () => {
    const data = storeData(ctx.store, name, { calibration: true });
    try {
      const calib = data.calibration!;
      const out = join(mkdtempSync(join(tmpdir(), 'edgeq-q-')), `${name}.int8.onnx`);
      try {
        checkAbort(ctx.signal);
        const q = await quantize({
          ...options,
          model: data.fp32.path,
          calib: calib.files,
          out,
          labels: calib.labels,
          onProgress: (stage, done, total) => {
            checkAbort(ctx.signal);
            ctx.progress(stage, stage === 'calibrate' ? 0.8 * (total ? done / total : 0) : 0.8 + 0.2 * (total ? done / total : 0));
          },
        });
        const v = await registerModel(ctx.store, ctx.stateDir, name, out, 'int8', data.fp32.version);
        return {
          model: name,
          fp32Version: data.fp32.version,
          int8Version: v.version,
          reason,
          profile: q.profile,
          method: q.method,
          perChannel: q.perChannel,
          reduceRange: q.reduceRange,
          calibrationSamples: q.calibCount,
          sizeBytes: q.sizeBytes,
          int8Ops: q.int8Ops,
          floatOps: q.floatOps,
          ...(q.heldOut ? { heldOut: q.heldOut } : {}),
          ...(q.fallback?.length ? { keptFloat: q.fallback.map((f) => f.node) } : {}),
          warnings: q.warnings,
        };
      } finally {
        rmSync(join(out, '..'), { recursive: true, force: true });
      }
    } finally {
      data.cleanup();
    }
  });
  return { result };
}

async function evalJob(cmd: Command<'eval'>, ctx: JobContext): Promise<JobOutcome> {
  const name = cmd.args.model;
  const v = versionOf(ctx.store, name, cmd.args.version);
  const ref = v.kind === 'int8' ? ((v.parentVersion !== null ? ctx.store.getVersion(name, v.parentVersion) : undefined) ?? fp32Version(ctx.store, name)) : v;
  const result = await inRun(ctx, 'eval', { model: name, version: v.version }, async () => {
    const { data, split } = evalData(ctx.store, name);
    try {
      const d = data[split]!;
      checkAbort(ctx.signal);
      const ev = await evaluate({
        model: ref.path,
        compare: v.kind === 'int8' ? v.path : undefined,
        data: d.files,
        labels: d.labels,
        threads: ctx.threads,
        onProgress: (done, total) => {
          checkAbort(ctx.signal);
          ctx.progress('eval', total ? done / total : 0);
        },
      });
      return {
        model: name,
        version: v.version,
        kind: v.kind,
        ...(v.kind === 'int8' ? { referenceVersion: ref.version } : {}),
        source: split === 'holdout' ? 'held-out samples' : 'calibration samples (no held-out samples yet)',
        samples: ev.samples,
        ...(ev.classes ? { classes: ev.classes } : {}),
        ...(v.kind === 'int8'
          ? { fp32: { top1: ev.model.top1, top5: ev.model.top5 }, int8: { top1: ev.compare?.top1, top5: ev.compare?.top5 }, agreement: ev.agreement }
          : { top1: ev.model.top1, top5: ev.model.top5 }),
        ...(ev.outputs ? { outputs: ev.outputs.map((o) => ({ name: o.name, sqnrDb: o.sqnrDb, cosine: o.cosine, maxAbsError: o.maxAbsError, meanAbsError: o.meanAbsError })) } : {}),
      };
    } finally {
      data.cleanup();
    }
  });
  return { result };
}

async function benchJob(cmd: Command<'bench'>, ctx: JobContext): Promise<JobOutcome> {
  const name = cmd.args.model;
  const v = versionOf(ctx.store, name, cmd.args.version);
  const runs = cmd.args.runs ?? 100;
  const result = await inRun(ctx, 'bench', { model: name, version: v.version, runs, threads: cmd.args.threads ?? 1 }, async () => {
    // A real sample when there is one (some models care about their input values).
    const has = ctx.store.countSamples(name) > 0;
    const data = has ? evalData(ctx.store, name) : undefined;
    try {
      checkAbort(ctx.signal);
      const b = await benchInChild({
        model: v.path,
        threads: cmd.args.threads ?? 1,
        runs,
        warmup: Math.min(10, runs),
        data: data?.data[data.split]?.files,
        onProgress: (stage, done, total) => {
          ctx.progress(stage === 'warmup' ? 'warmup' : 'bench', stage === 'warmup' ? 0.1 * (total ? done / total : 0) : 0.1 + 0.9 * (total ? done / total : 0));
        },
      });
      checkAbort(ctx.signal);
      const { inputs, model: _path, ...figures } = b;
      return { model: name, version: v.version, kind: v.kind, ...figures, inputs: inputs.map((i) => ({ name: i.name, shape: i.shape, dtype: i.dtype, source: i.source })) };
    } finally {
      data?.data.cleanup();
    }
  });
  return { result };
}

async function importJob(cmd: Command<'import'>, ctx: JobContext): Promise<JobOutcome> {
  const { model, source, labels } = cmd.args;
  const src = checkSource(source, ctx.importCfg.allow);
  const lab = labels !== undefined ? checkSource(labels, ctx.importCfg.allow) : undefined;
  const result = await inRun(ctx, 'import', { model, source, labels }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'edgeq-import-'));
    try {
      const local = async (s: typeof src, file: string, share: [number, number]): Promise<string> => {
        if (s.kind === 'file') {
          checkFileSize(s.path, ctx.importCfg.maxBytes);
          return s.path;
        }
        ctx.progress('download', share[0]);
        const dest = join(dir, file);
        await download(s.url, dest, ctx.importCfg.maxBytes, ctx.importCfg.allow, ctx.signal);
        ctx.progress('download', share[1]);
        return dest;
      };
      const x = await local(src, 'samples.npy', [0, 0.4]);
      const y = lab ? await local(lab, 'labels.npy', [0.4, 0.5]) : undefined;
      checkAbort(ctx.signal);
      const tag = src.kind === 'file' ? basename(src.path) : src.url.href;
      const r = importNpy(ctx.store, model, new Map([['', x]]), {
        labels: y,
        source: `import:${tag}`.slice(0, 256),
        onProgress: (done, total) => ctx.progress('import', 0.5 + 0.5 * (total ? done / total : 0)),
      });
      return { model, source, offered: r.offered, outcomes: r.outcomes, kept: r.stats.kept, bytes: r.stats.bytes };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return { result };
}

/** deploy: fetch, verify, warm up and activate the model a manifest names (agent/deploy.ts). */
async function deployJob(cmd: Command<'deploy'>, ctx: JobContext): Promise<JobOutcome> {
  const manifest = parseManifest(cmd.args.manifest, 'the deploy command\'s manifest');
  const r = await deployManifest(ctx.store, ctx.stateDir, manifest, {
    config: ctx.deployCfg,
    onProgress: (bytes, size) => {
      checkAbort(ctx.signal);
      ctx.progress('download', size ? bytes / size : 0);
    },
  });
  return { result: jsonSafe({ ...r }) as Record<string, unknown> };
}

/** activate / rollback: switch the active version after a warm-up check of the new one. */
async function switchJob(cmd: Command<'activate'> | Command<'rollback'>, ctx: JobContext): Promise<JobOutcome> {
  const name = cmd.args.model;
  const r = cmd.type === 'activate'
    ? await activateVersion(ctx.store, name, resolveVersionRef(ctx.store, versionRef(name, (cmd as Command<'activate'>).args.version)).version)
    : await rollbackModel(ctx.store, name);
  return { result: { model: name, active: r.version.version, kind: r.version.kind, ...(r.version.release !== undefined ? { release: r.version.release } : {}), previous: r.previous?.version ?? null, pending: r.pending } };
}

/** A number names the store's version; a string the manifest's release (or vN). */
function versionRef(name: string, version: number | string): string {
  return typeof version === 'number' ? `${name}@v${version}` : `${name}@${version}`;
}
