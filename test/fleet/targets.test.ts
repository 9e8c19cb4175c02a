/** The command-line pieces of `fleet send` / `fleet devices`: --where, device ids, ARGS. No services needed. */
import test from 'ava';
import { FleetController } from '../../fleet/controller.js';
import { FleetError } from '../../fleet/output.js';
import type { DeviceRecord } from '../../fleet/store/types.js';
import { compileWhere, parseCommandArgs, parseDeviceIds, parseWhere } from '../../fleet/targets.js';

function device(id: string, extra: Partial<DeviceRecord> = {}): DeviceRecord {
  return { deviceId: id, online: true, seq: 1, arch: 'arm64', cpu: 'Cortex-A72', hostname: `${id}.lan`, profile: 'qnnpack', agentVersion: '0.1.0', models: { fmnist: { version: 1, kind: 'fp32' } }, statusAt: null, lastSeen: '2026-01-01T00:00:00.000Z', status: null, lastReport: null, ...extra };
}

const usage = (fn: () => unknown, code = 'E_ARGUMENT') => {
  try {
    fn();
  } catch (e) {
    return e instanceof FleetError && e.code === code && e.usage;
  }
  return false;
};

test('--where: store filter for online/arch/profile, the rest tested in memory; online by default', (t) => {
  const w = compileWhere(parseWhere(['arch=arm64', 'profile=qnnpack']), true);
  t.deepEqual(w.filter, { arch: 'arm64', profile: 'qnnpack', online: true });
  t.deepEqual(compileWhere(parseWhere(['online=any']), true).filter, {});
  t.deepEqual(compileWhere(parseWhere(['online=no']), true).filter, { online: false });
  t.deepEqual(compileWhere([], undefined).filter, {});
  const { test: match } = compileWhere(parseWhere(['id=cam-*', 'cpu=cortex', 'model=fmnist', 'hostname=*.lan', 'agent=0.1.0']), true);
  t.true(match(device('cam-1')));
  t.false(match(device('door-1')));
  t.false(match(device('cam-2', { cpu: 'AMD EPYC' })));
  t.false(match(device('cam-3', { models: {} })));
  t.false(match(device('cam-4', { agentVersion: '0.2.0' })));
  t.true(usage(() => parseWhere(['colour=red'])));
  t.true(usage(() => parseWhere(['arch'])));
  t.true(usage(() => parseWhere(['online=maybe'])));
});

test('device ids: comma-separated, checked against the protocol, deduplicated', (t) => {
  t.deepEqual(parseDeviceIds('a,b, a'), ['a', 'b']);
  t.true(usage(() => parseDeviceIds('a/b')));
  t.true(usage(() => parseDeviceIds('+')));
  t.true(usage(() => parseDeviceIds(',')));
});

test('ARGS: one JSON object or key=value pairs, typed values, dotted keys nest', (t) => {
  t.deepEqual(parseCommandArgs(['{"model":"m","runs":5}']).args, { model: 'm', runs: 5 });
  t.deepEqual(parseCommandArgs(['model=m', 'runs=5', 'perChannel=false', 'percentile=99.9']).args, { model: 'm', runs: 5, perChannel: false, percentile: 99.9 });
  t.deepEqual(parseCommandArgs(['set.quantize.method=entropy', 'set.threads=2']).args, { set: { 'quantize.method': 'entropy', threads: 2 } });
  t.deepEqual(parseCommandArgs([]).args, {});
  t.true(usage(() => parseCommandArgs(['{not json'])));
  t.true(usage(() => parseCommandArgs(['[1]'])));
  t.true(usage(() => parseCommandArgs(['model'])));
  t.true(usage(() => parseCommandArgs(['a=1', 'a=2'])));
});

test('commands are checked against the protocol before they are sent', (t) => {
  t.deepEqual(FleetController.checkCommand('status', undefined), {});
  t.deepEqual(FleetController.checkCommand('optimize', { model: 'fmnist', runs: 50 }), { model: 'fmnist', runs: 50 });
  t.true(usage(() => FleetController.checkCommand('reboot', {}), 'E_COMMAND_UNKNOWN'));
  t.true(usage(() => FleetController.checkCommand('optimize', {}), 'E_COMMAND_INVALID'));
  t.true(usage(() => FleetController.checkCommand('status', { verbose: true }), 'E_COMMAND_INVALID'));
  t.true(usage(() => FleetController.checkCommand('capture', { model: 'm', action: 'pause' }), 'E_COMMAND_INVALID'));
});
