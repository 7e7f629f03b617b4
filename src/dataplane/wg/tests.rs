//! Tests of the encrypted packet path: two nodes' tunnel tables and packet cores
//! talking to each other in memory.
