//! Fuzz target: the PostgreSQL raw stream: drkit's tar of streams, its index, parts and roles script.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drkit_drivers::fuzzing::pg_archive(data);
});
