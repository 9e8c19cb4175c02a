import test from 'ava';
import { npyTarget } from '../../tools/fuzzing/targets.js';
import { fuzzTest } from '../helpers/fuzz.js';

fuzzTest(test, npyTarget);
