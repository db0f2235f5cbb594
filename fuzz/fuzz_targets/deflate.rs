//! Bytes as a deflate (zlib) request body, inflated as the receivers
//! inflate it. The harness is `tpsgap::fuzzing::deflate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tpsgap::fuzzing::deflate(data);
});
