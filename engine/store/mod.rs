//! The durable journal of runs, steps and attempts, on sled.
