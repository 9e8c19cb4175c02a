import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { artifactSource, parseManifest } from '../../deploy/manifest.js';
import { canonicalBytes, checkSignature, parsePublicKey, signManifest } from '../../deploy/signature.js';
import { checkSpace } from '../../deploy/space.js';

const SHA = 'AB'.repeat(32);
const good = { name: 'fmnist', version: 3, url: 'https://models.example/f.onnx', sha256: SHA, size: 10 };

test('parseManifest normalises the version and sha256, and refuses bad fields', (t) => {
  t.deepEqual(parseManifest(good), { name: 'fmnist', version: '3', url: good.url, sha256: SHA.toLowerCase(), size: 10 });
  t.is(parseManifest({ ...good, version: '1.4.0-rc.1+b5' }).version, '1.4.0-rc.1+b5');
  for (const bad of [
    null, [], { ...good, name: '-x' }, { ...good, version: 0 }, { ...good, version: 1.5 }, { ...good, version: '' }, { ...good, version: 'a b' },
    { ...good, url: 'ftp://h/x' }, { ...good, url: 'https://u:p@h/x' }, { ...good, sha256: 'abc' }, { ...good, size: 0 }, { ...good, size: '10' },
    { ...good, signature: '!!' }, { ...good, extra: 1 }, { ...good, kind: 'int4' },
  ]) {
    t.throws(() => parseManifest(bad), { code: 'E_MANIFEST_INVALID' } as never, JSON.stringify(bad));
  }
});

test('artifactSource: http(s), file URLs, absolute and relative paths', (t) => {
  t.like(artifactSource(parseManifest(good)), { kind: 'http' });
  t.deepEqual(artifactSource(parseManifest({ ...good, url: 'file:///srv/m.onnx' })), { kind: 'file', path: '/srv/m.onnx' });
  t.deepEqual(artifactSource(parseManifest({ ...good, url: 'm.onnx' }), '/srv/dir'), { kind: 'file', path: '/srv/dir/m.onnx' });
});

test('Ed25519 signatures over the canonical bytes', (t) => {
  const k = generateKeyPairSync('ed25519');
  const other = generateKeyPairSync('ed25519');
  const m = parseManifest(good);
  t.is(canonicalBytes(m).toString(), JSON.stringify({ name: 'fmnist', version: '3', url: good.url, sha256: SHA.toLowerCase(), size: 10 }));
  const signed = { ...m, signature: signManifest(m, k.privateKey) };
  t.is(checkSignature(signed, [other.publicKey, k.publicKey], true), 'verified');
  t.throws(() => checkSignature(signed, [other.publicKey], false), { code: 'E_SIGNATURE_INVALID' } as never);
  t.throws(() => checkSignature({ ...signed, size: 11 }, [k.publicKey], false), { code: 'E_SIGNATURE_INVALID' } as never);
  t.throws(() => checkSignature({ ...signed, signature: 'AAAA' }, [k.publicKey], false), { code: 'E_SIGNATURE_INVALID' } as never);
  t.throws(() => checkSignature(m, [k.publicKey], true), { code: 'E_SIGNATURE_REQUIRED' } as never);
  t.is(checkSignature(m, [k.publicKey], false), 'unsigned');
  t.is(checkSignature(signed, [], false), 'not-checked');
  // kind is signed when present; without it the bytes are the five fields alone.
  const int8 = parseManifest({ ...good, kind: 'int8' });
  t.is(canonicalBytes(int8).toString(), JSON.stringify({ name: 'fmnist', version: '3', url: good.url, sha256: SHA.toLowerCase(), size: 10, kind: 'int8' }));
  const signedInt8 = { ...int8, signature: signManifest(int8, k.privateKey) };
  t.is(checkSignature(signedInt8, [k.publicKey], true), 'verified');
  t.throws(() => checkSignature({ ...signedInt8, kind: 'fp32' }, [k.publicKey], true), { code: 'E_SIGNATURE_INVALID' } as never);
  t.throws(() => checkSignature({ ...signed, kind: 'int8' }, [k.publicKey], true), { code: 'E_SIGNATURE_INVALID' } as never);
  t.throws(() => checkSignature(signed, [], true), { code: 'E_CONFIG_INVALID' } as never);
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  t.throws(() => parsePublicKey(rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string), { code: 'E_CONFIG_INVALID' } as never);
});

test('checkSpace counts the model, its int8 conversion and the floor, less a partial download', (t) => {
  t.like(checkSpace('/', 1000, { minFreeBytes: 0, free: 1350 }), { need: 1350 });
  t.throws(() => checkSpace('/', 1000, { minFreeBytes: 1, free: 1350 }), { code: 'E_DISK_SPACE' } as never);
  t.notThrows(() => checkSpace('/', 1000, { minFreeBytes: 1, free: 1350, alreadyHave: 1 }));
  t.throws(() => checkSpace('/', 1, { minFreeBytes: 2 ** 60 }), { code: 'E_DISK_SPACE' } as never);
});
