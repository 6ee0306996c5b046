//! sotalign: align frozen pretrained vision and text encoders from few image-text pairs plus
//! unpaired data (SOTAlign: a linear CCA teacher, then student heads refined with a KL-of-OT-plans
//! loss on unpaired batches), and serve the result to curation clients.
//!
//! Code map (see ARCHITECTURE.md at the repository root):
//! - the alignment engine is its own crate, `sotalign_engine` (daemon/engine): pure computation on
//!   in-memory matrices, no IO, no tokio, no global state. Everything else calls into it.
//! - [`limits`]: every cap on a size a client controls, and the daemon's read scope.
//! - [`io`]: reading and writing embeddings (`.npy`, safetensors), manifests, checkpoints.

pub mod assets;
pub mod cli;
pub mod encoders;
pub mod export;
pub mod index;
pub mod ingest;
pub mod io;
pub mod limits;
pub mod server;
pub mod store;
