import test from 'ava';
import { manifestTarget } from '../../tools/fuzzing/targets.js';
import { fuzzTest } from '../helpers/fuzz.js';

fuzzTest(test, manifestTarget);
