//! File formats: embeddings (`.npy`, safetensors), manifests, checkpoints. Filled by the engine work.
