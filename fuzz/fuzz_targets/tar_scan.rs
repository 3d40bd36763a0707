//! Fuzz target: the Docker volume tar scanner (observe and enforce modes, several read sizes).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drkit_drivers::fuzzing::tar_scan(data);
});
