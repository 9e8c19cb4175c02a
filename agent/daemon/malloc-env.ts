/**
 * glibc malloc settings the daemon runs with. systemd/edgeq.service and Dockerfile.arm64 set
 * them (test/agent/malloc-env.test.ts holds both to this list) and the soak run spawns the daemon
 * with them, as systemd does. They must be in the environment before the process starts: glibc
 * reads them once, when malloc initialises, so the daemon cannot set them for itself.
 *
 * Why: an optimize job allocates and frees tens of MiB in native code (ONNX Runtime sessions for
 * calibration and evaluation, their arenas, the new int8 version loading in the endpoint). By
 * default glibc raises its mmap threshold each time a large mmapped block is freed, so the next
 * job's large blocks land in the heap instead, and what is freed in the middle of a heap stays
 * resident; with one arena per thread (up to 8 per core) each ONNX Runtime and libuv thread keeps
 * its own. Idle RSS then swings by up to ~70 MiB from job to job. A fixed threshold (which also
 * stops the dynamic adjustment) returns large blocks to the kernel when freed, and two arenas
 * bound what threads keep. `npm run bench:memory` measures both settings (bench/RESULTS.md).
 * Other C libraries (musl) ignore these variables.
 */
export const MALLOC_ENV: Readonly<Record<string, string>> = Object.freeze({
  MALLOC_ARENA_MAX: '2',
  MALLOC_MMAP_THRESHOLD_: '131072',
});

/** Whether this process was started with every MALLOC_ENV setting. */
export function mallocTuned(env: NodeJS.ProcessEnv = process.env): boolean {
  return Object.entries(MALLOC_ENV).every(([k, v]) => env[k] === v);
}
