/** Reading a JSON file the user named: a missing or unreadable file and bad JSON each get one clear error. */
import { readFileSync } from 'node:fs';
import { EdgeqError, fsError, type ErrorCode } from '../quant/errors.js';

export function readJsonFile(path: string, code: ErrorCode): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw fsError(e, path);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new EdgeqError(code, `${path} is not valid JSON: ${(e as Error).message}`);
  }
}
