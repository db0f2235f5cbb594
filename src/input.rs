//! Reads OTLP trace exports from files: the Collector file exporter's JSON
//! lines, or binary protobuf. Streams: memory holds one line or one
//! `ResourceSpans` at a time, never the whole file.

use std::io::{BufRead, BufReader, Read};

use bytes::Bytes;
use flate2::read::MultiGzDecoder;

use crate::extract::{Extracted, Extractor};
use crate::lean::view::{RequestView, ResourceSpansView};
use crate::lean::{self, ResourceSpans};

/// One `ResourceSpans` read from a file: decoded from OTLP JSON, or
/// protobuf read in place.
pub enum FileSpans<'a> {
    Lean(ResourceSpans),
    Wire(ResourceSpansView<'a>),
}

impl FileSpans<'_> {
    /// Extracts every span with `x`, handing each result to `sink`.
    ///
    /// # Errors
    /// When a span read in place is malformed (never after
    /// [`ResourceSpansView::parse`], which `read_traces` uses).
    pub fn extract<'b>(
        &'b self,
        x: &Extractor,
        sink: &mut impl FnMut(Extracted<'b>),
    ) -> Result<(), crate::lean::view::WireError> {
        match self {
            FileSpans::Lean(rs) => {
                x.resource_spans(rs, sink);
                Ok(())
            }
            FileSpans::Wire(rs) => {
                let mut out = Vec::new();
                x.resource_spans_view(*rs, &mut out)?;
                out.into_iter().for_each(sink);
                Ok(())
            }
        }
    }
}

/// How an input file is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Decide from the first bytes: `{` is JSON lines, anything else protobuf
    /// (gzip-compressed files are unpacked first).
    #[default]
    Auto,
    /// OTLP JSON, one `ExportTraceServiceRequest` per line.
    Json,
    /// Binary protobuf: one `ExportTraceServiceRequest` (or several
    /// concatenated), or a stream of messages each prefixed by its length as
    /// a 4-byte big-endian integer.
    Proto,
}

/// A malformed line or message: where it is and why.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {reason}")]
pub struct InputError {
    pub location: String,
    pub reason: String,
}

/// Reads one input, handing every `ResourceSpans` (with a `file:line` or
/// `file:byte N` location) to `sink` and every malformed part to `errors`.
/// Reading goes on after a malformed part where the format allows it.
pub fn read_traces(
    reader: impl Read,
    name: &str,
    format: InputFormat,
    sink: &mut impl FnMut(&str, FileSpans<'_>),
    errors: &mut impl FnMut(InputError),
) {
    let mut plain = BufReader::with_capacity(1 << 16, reader);
    let head = match plain.fill_buf() {
        Ok(b) => b.get(..2).map(|h| [h[0], h[1]]),
        Err(e) => {
            errors(InputError {
                location: name.to_string(),
                reason: e.to_string(),
            });
            return;
        }
    };
    let mut r: Box<dyn BufRead + '_> = if head == Some([0x1f, 0x8b]) {
        Box::new(BufReader::with_capacity(
            1 << 16,
            MultiGzDecoder::new(plain),
        ))
    } else {
        Box::new(plain)
    };
    let first = r
        .fill_buf()
        .ok()
        .and_then(|b| b.iter().copied().find(|c| !c.is_ascii_whitespace()));
    let json = match format {
        InputFormat::Json => true,
        InputFormat::Proto => false,
        InputFormat::Auto => first == Some(b'{'),
    };
    if json {
        read_json_lines(r, name, sink, errors);
    } else {
        read_proto(r, name, sink, errors);
    }
}

fn read_json_lines(
    mut r: impl BufRead,
    name: &str,
    sink: &mut impl FnMut(&str, FileSpans<'_>),
    errors: &mut impl FnMut(InputError),
) {
    let mut line = Vec::new();
    let mut n = 0u64;
    loop {
        line.clear();
        n += 1;
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                errors(InputError {
                    location: format!("{name}:{n}"),
                    reason: e.to_string(),
                });
                return;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let location = format!("{name}:{n}");
        // Decoding slices this line: strings without escapes are not copied.
        // The next line's buffer starts at this one's size and a little
        // more (lines of one file are much alike), not empty: grown from
        // nothing, it was copied again at every doubling.
        let room = line.len() + line.len() / 8;
        let buf = Bytes::from(std::mem::replace(&mut line, Vec::with_capacity(room)));
        match lean::json::decode(&buf) {
            Ok(req) => req
                .resource_spans
                .into_iter()
                .for_each(|rs| sink(&location, FileSpans::Lean(rs))),
            Err(e) => errors(InputError {
                location,
                reason: format!("not an OTLP JSON trace export: {e}"),
            }),
        }
    }
}

/// Reads a varint; `Ok(None)` at a clean end of input.
fn read_varint(r: &mut impl BufRead) -> std::io::Result<Option<u64>> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if r.read(&mut b)? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "varint longer than 10 bytes",
    ))
}

/// The largest single `ResourceSpans` or length-prefixed message accepted
/// from a file (the OTLP default receive limit).
const MAX_MESSAGE: u64 = 64 << 20;

fn read_proto(
    mut r: impl BufRead,
    name: &str,
    sink: &mut impl FnMut(&str, FileSpans<'_>),
    errors: &mut impl FnMut(InputError),
) {
    let length_prefixed = r.fill_buf().ok().and_then(|b| b.first().copied()) == Some(0);
    let mut offset = 0u64;
    let mut buf = Vec::new();
    loop {
        let at = offset;
        let fail = |reason: String| InputError {
            location: format!("{name}:byte {at}"),
            reason,
        };
        let len = if length_prefixed {
            let mut pfx = [0u8; 4];
            match r.read(&mut pfx[..1]) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => return errors(fail(e.to_string())),
            }
            if let Err(e) = r.read_exact(&mut pfx[1..]) {
                return errors(fail(format!("truncated length prefix: {e}")));
            }
            offset += 4;
            u64::from(u32::from_be_bytes(pfx))
        } else {
            let tag = match read_varint(&mut r) {
                Ok(None) => return,
                Ok(Some(t)) => t,
                Err(e) => return errors(fail(format!("not a protobuf trace export: {e}"))),
            };
            offset += varint_len(tag);
            if tag & 7 != 2 {
                return errors(fail(format!(
                    "not a protobuf trace export: unexpected field tag {tag}"
                )));
            }
            match read_varint(&mut r) {
                Ok(Some(l)) => {
                    offset += varint_len(l);
                    if tag >> 3 != 1 {
                        // An unknown length-delimited field: skip it.
                        if let Err(e) = skip(&mut r, l) {
                            return errors(fail(format!("truncated field: {e}")));
                        }
                        offset += l;
                        continue;
                    }
                    l
                }
                Ok(None) | Err(_) => {
                    return errors(fail("truncated length".to_string()));
                }
            }
        };
        if len > MAX_MESSAGE {
            return errors(fail(format!(
                "message of {len} bytes exceeds the {MAX_MESSAGE}-byte limit"
            )));
        }
        buf.resize(len as usize, 0);
        if let Err(e) = r.read_exact(&mut buf) {
            return errors(fail(format!("truncated message: {e}")));
        }
        offset += len;
        let location = format!("{name}:byte {at}");
        // Read in place: nothing is copied or built.
        if length_prefixed {
            match RequestView::parse(&buf) {
                Ok(req) => req
                    .resource_spans()
                    .for_each(|rs| sink(&location, FileSpans::Wire(rs))),
                Err(e) => errors(fail(format!("not a protobuf trace export: {e}"))),
            }
        } else {
            match ResourceSpansView::parse(&buf) {
                Ok(rs) => sink(&location, FileSpans::Wire(rs)),
                Err(e) => errors(fail(format!("not a protobuf trace export: {e}"))),
            }
        }
    }
}

fn skip(r: &mut impl BufRead, n: u64) -> std::io::Result<()> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    if copied < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn varint_len(v: u64) -> u64 {
    u64::from((64 - v.leading_zeros()).max(1).div_ceil(7))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn req(n: usize) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: (0..n)
                .map(|i| ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![Span {
                            name: format!("s{i}"),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn collect(bytes: &[u8], format: InputFormat) -> (Vec<String>, Vec<String>) {
        let mut got = Vec::new();
        let mut errs = Vec::new();
        read_traces(
            bytes,
            "f",
            format,
            &mut |loc, rs| {
                let name = match rs {
                    FileSpans::Lean(rs) => rs.scope_spans[0].spans[0].name.clone(),
                    FileSpans::Wire(v) => bytes::Bytes::copy_from_slice(
                        v.spans()
                            .next()
                            .and_then(Result::ok)
                            .map_or(&[][..], |s| s.name),
                    ),
                };
                got.push(format!("{loc} {}", String::from_utf8_lossy(&name)))
            },
            &mut |e| errs.push(e.to_string()),
        );
        (got, errs)
    }

    #[test]
    fn raw_protobuf_streams_resource_spans() {
        let bytes = req(3).encode_to_vec();
        let (got, errs) = collect(&bytes, InputFormat::Auto);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(got.len(), 3);
        assert!(got[2].ends_with(" s2"));
        // Concatenated messages are one longer message.
        let twice = [bytes.clone(), bytes].concat();
        assert_eq!(collect(&twice, InputFormat::Proto).0.len(), 6);
    }

    #[test]
    fn length_prefixed_protobuf() {
        let mut bytes = Vec::new();
        for n in [1, 2] {
            let m = req(n).encode_to_vec();
            bytes.extend_from_slice(&(m.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&m);
        }
        let (got, errs) = collect(&bytes, InputFormat::Auto);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(got, vec!["f:byte 0 s0", "f:byte 14 s0", "f:byte 14 s1"]);
    }

    #[test]
    fn truncated_protobuf_is_an_error_not_a_panic() {
        let bytes = req(2).encode_to_vec();
        let (got, errs) = collect(&bytes[..bytes.len() - 3], InputFormat::Auto);
        assert_eq!(got.len(), 1);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("f:byte "), "{errs:?}");
        let (_, errs) = collect(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x7f], InputFormat::Proto);
        assert!(errs[0].contains("exceeds"), "{errs:?}");
    }

    #[test]
    fn json_lines_report_bad_lines_and_go_on() {
        let line = serde_json::to_string(&req(1)).unwrap();
        let text = format!("{line}\n{{not json\n\n{line}\n");
        let (got, errs) = collect(text.as_bytes(), InputFormat::Auto);
        assert_eq!(got, vec!["f:1 s0", "f:4 s0"]);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("f:2: not an OTLP JSON trace export"),
            "{errs:?}"
        );
    }

    #[test]
    fn gzip_is_unpacked() {
        use std::io::Write;
        let line = serde_json::to_string(&req(2)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(line.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        assert_eq!(collect(&bytes, InputFormat::Auto).0.len(), 2);
    }
}
