//! Fuzz target: the mongodump --archive reader, as the restore and the verify run it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    drkit_drivers::fuzzing::mongo_archive(data);
});
