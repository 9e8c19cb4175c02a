/** sha256 of a file, streamed (models can be larger than we want to hold twice). */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { fsError } from './errors.js';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  try {
    for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  } catch (e) {
    throw fsError(e, path);
  }
  return h.digest('hex');
}
