//! Fuzz target: the roles script (pg_dumpall --globals-only) parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drkit_drivers::fuzzing::globals_script(data);
});
