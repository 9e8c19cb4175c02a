import test from 'ava';
import { writeFileSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadConfig, parseConfig } from '../../agent/config.js';
import { EdgeqError } from '../../quant/errors.js';
import { CLI, FMNIST, tempDir } from '../helpers/fixtures.js';

test('a valid quantize section parses', (t) => {
  const c = parseConfig({ quantize: { profile: 'qnnpack', perChannel: true, method: 'percentile', percentile: 99.9, bins: 1024, maxDrop: 0.5 } }, 'cfg');
  t.is(c.quantize.profile, 'qnnpack');
  t.deepEqual(parseConfig({}, 'cfg').quantize, {});
});

test('bad configs name the key and the file', (t) => {
  for (const [value, re] of [
    [[], /must be a JSON object/],
    [{ quantise: {} }, /unknown key "quantise"/],
    [{ quantize: { method: 'kl' } }, /"quantize.method" must be one of/],
    [{ quantize: { percentile: 0 } }, /"quantize.percentile" must be a number in \(0, 100\]/],
    [{ quantize: { maxDrop: -1 } }, /"quantize.maxDrop"/],
    [{ quantize: { bins: 3 } }, /"quantize.bins"/],
    [{ quantize: { perChanel: true } }, /unknown key "quantize.perChanel"/],
  ] as const) {
    const err = t.throws(() => parseConfig(value, 'my.json'));
    t.true(err instanceof EdgeqError);
    t.is((err as EdgeqError).code, 'E_CONFIG_INVALID');
    t.regex(err!.message, /^my\.json: /);
    t.regex(err!.message, re);
  }
  const dir = tempDir(t);
  writeFileSync(join(dir, 'broken.json'), '{"quantize": ');
  t.throws(() => loadConfig(join(dir, 'broken.json')), { message: /broken\.json is not valid JSON/ });
});

test('CLI: the config sets defaults and flags override it', (t) => {
  const dir = tempDir(t);
  const cfg = join(dir, 'edgeq.json');
  writeFileSync(cfg, JSON.stringify({ quantize: { profile: 'qnnpack', perChannel: true, method: 'minmax' } }));
  const run = (extra: string[]) => spawnSync(process.execPath, [CLI, 'quantize', '--model', FMNIST.model, '--calib', FMNIST.calib, '--out', join(dir, 'q.onnx'), '--calib-count', '20', '--config', cfg, '--json', ...extra], { encoding: 'utf8' });
  const a = JSON.parse(run([]).stdout);
  t.is(a.profile, 'qnnpack');
  t.true(a.perChannel);
  t.is(a.method, 'minmax');
  const b = JSON.parse(run(['--per-tensor', '--method', 'histogram']).stdout);
  t.false(b.perChannel);
  t.is(b.method, 'histogram');
  writeFileSync(cfg, JSON.stringify({ quantize: { method: 'nope' } }));
  rmSync(join(dir, 'q.onnx'));
  const bad = run([]);
  t.is(bad.status, 1);
  t.is(JSON.parse(bad.stdout).error.code, 'E_CONFIG_INVALID');
  t.false(existsSync(join(dir, 'q.onnx')), 'a bad config writes nothing');
});
