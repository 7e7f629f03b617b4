//! Control plane: gossip membership and per-node subnet leases (sans-IO cores plus
//! one tokio driver).
