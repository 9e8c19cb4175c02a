/** The fleet link: the MQTT connection (mqtt.ts), its reconnect delays (backoff.ts) and the outbox sender (outbox.ts). */
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
export { BrokerRefusal, certificateCommonName, describeCertificate, LinkClosedError, MqttLink, type LinkOptions, type Log, type PublishOptions } from './mqtt.js';
export { OutboxSender, publishProperties } from './outbox.js';
