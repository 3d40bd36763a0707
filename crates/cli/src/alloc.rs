//! Allocator setting of the `drkit` process: the one place with `unsafe` code.
//!
//! glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large mmapped block is
//! freed, so after the first one, the large buffers of a dump (a MongoDB driver reads each
//! 16 MiB server reply into one buffer, then copies it) come from the heap of whichever thread
//! asked, and stay there. A fixed threshold of 1 MiB keeps every large buffer in its own
//! mapping, given back to the system when freed: a MongoDB dump of documents near 16 MiB went
//! from 86 to about 56 MiB of peak RSS (docs/benchmarks-mongodb.md). Buffers under 1 MiB (the
//! pipeline's 256 KiB chunks) are not affected.

/// Blocks of this size or larger are always mmapped, and unmapped when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Fix glibc's mmap threshold (a no-op elsewhere). Call before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt only changes a parameter of the allocator; it is called once, before
    // the runtime starts any thread, with a documented parameter and an in-range value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Fix glibc's mmap threshold (a no-op elsewhere). Call before any other thread starts.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
