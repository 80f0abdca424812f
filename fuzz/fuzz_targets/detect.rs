//! `proxy::fuzzing::detect`: see its properties there.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxy::fuzzing::detect(data));
