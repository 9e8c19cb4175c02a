/** Deterministic pseudo-random numbers for tests (the generator quant/ uses for random inputs). */
export { rng } from '../../quant/random.js';
