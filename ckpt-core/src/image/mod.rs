//! The on-disk image format: header, manifests, checksums and generations.
//! See `docs/image-format.md` for the byte layout.

pub mod checksum;
pub mod compress;
pub mod format;
pub mod generation;
pub mod manifest;
