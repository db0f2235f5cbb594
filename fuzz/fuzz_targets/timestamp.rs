//! Bytes as a timestamp attribute: a string, an integer and a double.
//! The harness is `tpsgap::fuzzing::timestamp`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tpsgap::fuzzing::timestamp(data);
});
