import test from 'ava';
import { commandTarget, fleetTarget } from '../../tools/fuzzing/targets.js';
import { fuzzTest } from '../helpers/fuzz.js';

fuzzTest(test, commandTarget);
fuzzTest(test, fleetTarget);
