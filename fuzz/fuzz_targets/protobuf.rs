//! Bytes as a binary protobuf `ExportTraceServiceRequest` and as a protobuf file.
//! The harness is `tpsgap::fuzzing::protobuf`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tpsgap::fuzzing::protobuf(data);
});
