/** Model names as the endpoint accepts them: safe as a path segment, a file name and a metric label. */
export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function isModelName(name: string): boolean {
  return MODEL_NAME.test(name);
}
