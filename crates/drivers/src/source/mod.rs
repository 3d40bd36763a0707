//! Sources: the systems drkit backs up.

mod measure;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "mongodb")]
pub mod mongodb;
#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "docker")]
pub mod docker_volume;
