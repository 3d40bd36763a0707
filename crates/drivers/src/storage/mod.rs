//! Storages: where archives and manifests are kept.

pub mod local;
#[cfg(feature = "s3")]
pub mod s3;
