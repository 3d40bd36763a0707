//! Helpers for tests of programs that build on drkit-drivers (feature `test-util`): writers
//! of the archive formats the drivers read, to craft valid and hostile inputs.

/// Build Docker-volume tar archives entry by entry (also hostile ones: links out of the
/// volume, device nodes, `..` paths).
#[cfg(feature = "docker")]
pub use crate::docker::tar::build as volume_tar;

/// Read and write the tar members of a PostgreSQL directory-format dump.
#[cfg(feature = "postgres")]
pub mod postgres_archive {
    pub use crate::source::postgres::archive::{write_end, write_member, TarReader};
}
