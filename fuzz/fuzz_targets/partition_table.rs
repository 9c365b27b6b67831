//! libFuzzer over `ota_fuzz::partition_table`: the body, its properties and its seeds live in
//! `crates/ota-fuzz`, which every `cargo xtask test` also runs on seeded random inputs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ota_fuzz::partition_table(data));
