/**
 * Errors are values with a stable code, so the CLI, the daemon and scripts can branch on them
 * and a person can act on the message. Every failure edgeq expects is one of these.
 */
export type ErrorCode =
  | 'E_FILE_NOT_FOUND'
  | 'E_FILE_UNREADABLE'
  | 'E_OUTPUT_UNWRITABLE'
  | 'E_MODEL_INVALID'
  | 'E_MODEL_UNSUPPORTED'
  | 'E_MODEL_MISMATCH'
  | 'E_REPORT_INVALID'
  | 'E_NPY_INVALID'
  | 'E_SHAPE_MISMATCH'
  | 'E_DTYPE_MISMATCH'
  | 'E_CALIB_MISSING'
  | 'E_CALIB_EMPTY'
  | 'E_EXCLUDE_UNKNOWN'
  | 'E_ARGUMENT'
  | 'E_ACCURACY_BUDGET'
  | 'E_CONFIG_INVALID'
  // the local inference endpoint (agent/serve)
  | 'E_MODEL_NAME'
  | 'E_MODEL_UNKNOWN'
  | 'E_NOT_FOUND'
  | 'E_METHOD_NOT_ALLOWED'
  | 'E_BODY_TOO_LARGE'
  | 'E_BAD_JSON'
  | 'E_BAD_REQUEST'
  | 'E_INPUT_MISSING'
  | 'E_INPUT_UNKNOWN'
  | 'E_INPUT_INVALID'
  | 'E_TIMEOUT'
  | 'E_UNAVAILABLE'
  | 'E_ADDRESS_IN_USE'
  | 'E_INTERNAL'
  | 'E_RUNTIME'
  // the on-device store and capture (agent/store, agent/capture)
  | 'E_CAPTURE_INVALID'
  | 'E_STORE_INVALID'
  | 'E_STORE_VERSION'
  | 'E_STORE_BUSY'
  | 'E_RUN_UNKNOWN'
  | 'E_RUN_STATE'
  | 'E_INTERRUPTED'
  // the daemon and its fleet link (agent/daemon, agent/link)
  | 'E_PAYLOAD_TOO_LARGE'
  | 'E_COMMAND_INVALID'
  | 'E_COMMAND_UNKNOWN'
  | 'E_QUEUE_FULL'
  | 'E_OUTBOX_FULL'
  | 'E_TENSOR_TOO_LARGE'
  | 'E_CANCELLED'
  | 'E_EXPIRED'
  | 'E_JOB_UNKNOWN'
  | 'E_IMPORT_NOT_ALLOWED'
  | 'E_DOWNLOAD'
  | 'E_ALREADY_RUNNING'
  // model artifacts: fetch, verify, activate (deploy/, agent/deploy.ts)
  | 'E_MANIFEST_INVALID'
  | 'E_SIGNATURE_INVALID'
  | 'E_SIGNATURE_REQUIRED'
  | 'E_SOURCE_NOT_ALLOWED'
  | 'E_ARTIFACT_TOO_LARGE'
  | 'E_SIZE_MISMATCH'
  | 'E_CHECKSUM_MISMATCH'
  | 'E_DISK_SPACE'
  | 'E_RELEASE_CONFLICT'
  | 'E_WARMUP_FAILED'
  | 'E_INPUTS_CHANGED'
  | 'E_NO_PREVIOUS';

export class EdgeqError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EdgeqError';
    this.code = code;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isEdgeqError(e: unknown): e is EdgeqError {
  return e instanceof EdgeqError;
}

/** Maps a Node fs error on `path` to an EdgeqError that names the file and what went wrong. */
export function fsError(e: unknown, path: string, writing = false): EdgeqError {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (writing) {
    const why = code === 'ENOENT' ? 'its directory does not exist' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : code === 'EROFS' ? 'read-only file system' : String((e as Error)?.message ?? e);
    return new EdgeqError('E_OUTPUT_UNWRITABLE', `cannot write ${path}: ${why}`, { cause: e });
  }
  if (code === 'ENOENT') return new EdgeqError('E_FILE_NOT_FOUND', `file not found: ${path}`, { cause: e });
  if (code === 'EISDIR') return new EdgeqError('E_FILE_UNREADABLE', `${path} is a directory, not a file`, { cause: e });
  if (code === 'EACCES' || code === 'EPERM') return new EdgeqError('E_FILE_UNREADABLE', `cannot read ${path}: permission denied`, { cause: e });
  return new EdgeqError('E_FILE_UNREADABLE', `cannot read ${path}: ${String((e as Error)?.message ?? e)}`, { cause: e });
}
