//! ckpt-core: the checkpoint engine.
