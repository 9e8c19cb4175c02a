/**
 * Imported before onnxruntime-node (ES modules run in import order): ONNX Runtime 1.2x's Linux
 * and macOS builds start Microsoft's telemetry when their environment is created. It writes a
 * device id and an event queue under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and tries to
 * upload them. An edge agent must write only to its state directory and must not call out to
 * anyone unasked, so telemetry is off unless the operator set ORT_DISABLE_TELEMETRY themselves.
 */
process.env.ORT_DISABLE_TELEMETRY ??= '1';
