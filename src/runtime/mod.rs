//! The runtime: what turns the engine's decisions into disk writes and network
//! sends. A node runs one shard per core ([`node`]); each shard's event loop
//! ([`shard`]) batches a turn's work into one WAL flush and few peer writes; the
//! front doors ([`doors`]) serve each connection on the shard it uses, and the
//! routers ([`router`]) send the requests for other partitions to their shards.

pub mod config;
pub mod dev;
pub mod doors;
pub mod executor;
pub mod failpoint;
pub mod identity;
pub mod inbox;
pub mod lifecycle;
pub mod local_inbox;
pub mod node;
pub mod oneshot;
pub mod overrides;
pub mod preflight;
pub mod reads;
mod refusal;
pub mod reload;
mod request_map;
pub mod retention;
pub mod router;
pub mod shard;
