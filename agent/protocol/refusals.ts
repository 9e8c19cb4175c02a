/**
 * What the broker's refusals mean, for both ends of the wire (the daemon's link and the fleet
 * controller): MQTT 5 reason codes (CONNACK, PUBACK, SUBACK) and the TLS failures of a mutual-TLS
 * broker, turned into one plain sentence instead of an OpenSSL error string.
 */

/** MQTT 5 reason codes a broker sends when it refuses something (MQTT 5.0 §2.4). */
export const MQTT_REASONS: Readonly<Record<number, string>> = Object.freeze({
  128: 'unspecified error',
  129: 'malformed packet',
  130: 'protocol error',
  131: 'implementation specific error',
  132: 'unsupported protocol version',
  133: 'client identifier not valid',
  134: 'bad user name or password',
  135: 'not authorized',
  136: 'server unavailable',
  137: 'server busy',
  138: 'banned',
  140: 'bad authentication method',
  143: 'topic filter invalid',
  144: 'topic name invalid',
  149: 'packet too large',
  151: 'quota exceeded',
  153: 'payload format invalid',
  154: 'retain not supported',
  155: 'QoS not supported',
  156: 'use another server',
  157: 'server moved',
  158: 'shared subscriptions not supported',
  159: 'connection rate exceeded',
  162: 'wildcard subscriptions not supported',
});

export const NOT_AUTHORIZED = 135;

/** "not authorized" for 135, else the code's name or "reason code N". */
export function reasonText(code: number): string {
  return MQTT_REASONS[code] ?? `reason code ${code}`;
}

/** A reason code from an error mqtt.js raised for a refused CONNECT, PUBLISH or SUBSCRIBE (≥ 0x80), else undefined. */
export function refusalCode(e: unknown): number | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'number' && code >= 0x80 && code <= 0xff ? code : undefined;
}

export interface TlsFailure {
  /**
   * Who said no: `broker` refused our certificate (or its absence); `client` refused the broker's
   * certificate; `config` means our own certificate and key cannot be used.
   */
  by: 'broker' | 'client' | 'config';
  /** Which case: certificate-required, unknown-ca, bad-certificate, certificate-expired, certificate-revoked, server-untrusted, server-expired, server-name, key-mismatch. */
  kind: string;
  /** One sentence, without the fix (each side knows its own setting names). */
  reason: string;
}

/** The OpenSSL words of a TLS error ("tlsv13 alert certificate required"), without its file names and numbers. */
export function tlsDetail(e: Error): string {
  const m = /SSL routines:[^:]*:([^:]+)/.exec(e.message);
  return (m ? m[1] : e.message).trim();
}

/** A TLS failure of a connection attempt explained, or undefined when `e` is not one we know. */
export function explainTlsError(e: Error & { code?: unknown }): TlsFailure | undefined {
  const code = typeof e.code === 'string' ? e.code : '';
  switch (code) {
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
      return { by: 'broker', kind: 'certificate-required', reason: 'the broker refused the TLS handshake: it requires a client certificate and none was presented' };
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
      return { by: 'broker', kind: 'unknown-ca', reason: 'the broker refused the TLS handshake: unknown CA — the client certificate was not issued by a CA the broker trusts (its cafile)' };
    case 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE':
    case 'ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE':
    case 'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED':
      return { by: 'broker', kind: 'bad-certificate', reason: `the broker refused the TLS handshake: it rejected the client certificate (${tlsDetail(e)})` };
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED':
      return { by: 'broker', kind: 'certificate-expired', reason: 'the broker refused the TLS handshake: the client certificate has expired (or is not valid yet)' };
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED':
      return { by: 'broker', kind: 'certificate-revoked', reason: 'the broker refused the TLS handshake: the client certificate is revoked (the broker\'s crlfile lists it)' };
    case 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE':
      return { by: 'broker', kind: 'handshake-failure', reason: 'the broker refused the TLS handshake (TLS 1.2 handshake failure: most often no client certificate was presented, or no common cipher)' };
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_SIGNATURE_FAILURE':
      return { by: 'client', kind: 'server-untrusted', reason: `the broker's certificate is not trusted: it was not issued by the CA this client trusts (${code})` };
    case 'CERT_HAS_EXPIRED':
    case 'CERT_NOT_YET_VALID':
      return { by: 'client', kind: 'server-expired', reason: `the broker's certificate is outside its validity period (${code})` };
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return { by: 'client', kind: 'server-name', reason: `the broker's certificate does not name the host in the broker URL: ${e.message}` };
    case 'ERR_OSSL_X509_KEY_VALUES_MISMATCH':
      return { by: 'config', kind: 'key-mismatch', reason: 'the client key does not belong to the client certificate' };
    default:
      return undefined;
  }
}
