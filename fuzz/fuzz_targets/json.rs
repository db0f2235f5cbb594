//! Bytes as an OTLP JSON export and as a file read with `--input-format auto`.
//! The harness is `tpsgap::fuzzing::json`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tpsgap::fuzzing::json(data);
});
