import test from 'ava';
import { parseConfig } from '../../agent/config.js';

test('the config\'s deploy section', (t) => {
  const deploy = { allow: ['/srv/models'], maxBytes: 1000, timeoutMs: 500, minFreeBytes: 0, keepVersions: 2, requireSignature: true, publicKeys: ['/etc/edgeq/key.pem'] };
  t.deepEqual(parseConfig({ deploy }, 'c.json').deploy, deploy);
  for (const [bad, re] of [
    [{ allow: ['relative/dir'] }, /deploy\.allow/],
    [{ keepVersions: 0 }, /deploy\.keepVersions/],
    [{ maxBytes: -1 }, /deploy\.maxBytes/],
    [{ publicKey: [] }, /unknown key "deploy\.publicKey"/],
  ] as const) {
    t.throws(() => parseConfig({ deploy: bad }, 'c.json'), { code: 'E_CONFIG_INVALID', message: re } as never);
  }
});
