/**
 * A test hook for crash tests: with EDGEQ_TEST_PAUSE_AT=point[,point…] in the environment, the
 * process prints "PAUSE <point>" on stdout when it reaches that point and then waits forever (the
 * test kills it there). Without the variable it costs nothing.
 */
export async function pauseAt(point: string): Promise<void> {
  const want = process.env.EDGEQ_TEST_PAUSE_AT;
  if (!want || !want.split(',').includes(point)) return;
  process.stdout.write(`PAUSE ${point}\n`);
  await new Promise<never>(() => {
    setInterval(() => {}, 1 << 30);
  });
}
