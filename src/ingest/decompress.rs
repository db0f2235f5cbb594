//! Compressed request bodies (gzip, zstd and deflate), decompressed into
//! one buffer, up to a limit.
//!
//! A gzip body is inflated in one call straight into a buffer sized from
//! its last member's trailer (ISIZE, the uncompressed length), where
//! reading it through `std::io::Read` grows a buffer step by step and
//! inflates a piece at a time; the inflater checks each member's CRC and
//! length. Concatenated members are one body, as
//! `flate2::read::MultiGzDecoder` reads them. A zstd body is read into a
//! buffer sized from its first frame's content size, when the frame has
//! one; concatenated frames are one body, as zstd's own decoder reads them.
//! A deflate body (zlib's format, as HTTP and gRPC mean "deflate") is
//! inflated as a gzip one is; it declares no length, and concatenated
//! streams are one body too.

/// The most deflate data expands (a 258-byte match in about two bits).
const MAX_RATIO: usize = 1032;

/// A decompressor: the body, and the most it may decompress to.
pub type Decompressor = fn(&[u8], usize) -> Result<Vec<u8>, DecompressError>;

/// The decompressor of a content encoding as gRPC's `grpc-encoding` and
/// HTTP's `Content-Encoding` name it; `None` for any but gzip, zstd and
/// deflate (also named zlib, as the Collector's HTTP client can name it).
pub fn for_encoding(name: &str) -> Option<Decompressor> {
    match name {
        "gzip" => Some(gunzip),
        "zstd" => Some(unzstd),
        "deflate" | "zlib" => Some(unzlib),
        _ => None,
    }
}

/// Why a compressed body was not decompressed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// It decompresses to more than the limit.
    #[error("inflates to more than {0} bytes")]
    TooLarge(usize),
    /// It ends before its last member or frame does.
    #[error("compressed stream ends too soon")]
    Truncated,
    /// Not in the format, or its data or checksum is wrong.
    #[error("{0}")]
    Corrupt(String),
}

/// The bytes gzip `data` inflates to, at most `max` of them.
///
/// # Errors
/// [`DecompressError`]: over `max`, cut short, or not valid gzip.
pub fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    // The trailer's length: modulo 2^32, and of the last member alone.
    let trailer = data
        .last_chunk::<4>()
        .map_or(0, |t| u32::from_le_bytes(*t) as usize);
    inflate_each(data, max, trailer, || flate2::Decompress::new_gzip(15))
}

/// The bytes zlib `data` (HTTP's and gRPC's `deflate`: RFC 1950, a header,
/// deflate data and an Adler-32) inflates to, at most `max` of them.
///
/// # Errors
/// [`DecompressError`]: over `max`, cut short, or not valid zlib.
pub fn unzlib(data: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    // zlib declares no length: a guess at what OTLP compresses by, which
    // the buffer grows past when it is more.
    let guess = data.len().saturating_mul(ZLIB_GUESS);
    inflate_each(data, max, guess, || flate2::Decompress::new(true))
}

/// How many times its compressed size an OTLP body without a declared
/// length is first given room for.
const ZLIB_GUESS: usize = 8;

/// `data` inflated stream after stream (a stream of the format `new`
/// makes the inflater for, then another if bytes remain) into one buffer,
/// first `declared` bytes (within [`first_capacity`]), at most `max`.
fn inflate_each(
    data: &[u8],
    max: usize,
    declared: usize,
    new: fn() -> flate2::Decompress,
) -> Result<Vec<u8>, DecompressError> {
    use flate2::{FlushDecompress, Status};
    // One more than `max` is room enough to know it is over.
    let limit = max.saturating_add(1);
    let mut out = Vec::with_capacity(first_capacity(declared, data, limit));
    let mut rest = data;
    loop {
        let mut z = new();
        loop {
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(DecompressError::TooLarge(max));
                }
                let more = out.len().max(4096).min(limit - out.len());
                out.reserve_exact(more);
            }
            let read = z.total_in() as usize;
            let written = out.len();
            let status = z
                .decompress_vec(&rest[read..], &mut out, FlushDecompress::Finish)
                .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
            if status == Status::StreamEnd {
                break;
            }
            // Room left and nothing taken or given: the input ended.
            let stalled = z.total_in() as usize == read && out.len() == written;
            if stalled && out.len() < out.capacity() {
                return Err(DecompressError::Truncated);
            }
        }
        if out.len() > max {
            return Err(DecompressError::TooLarge(max));
        }
        rest = &rest[z.total_in() as usize..];
        if rest.is_empty() {
            return Ok(out);
        }
    }
}

/// The bytes zstd `data` decompresses to, at most `max` of them.
///
/// # Errors
/// [`DecompressError`]: over `max`, cut short, or not valid zstd.
pub fn unzstd(data: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    use std::io::Read;
    let limit = max.saturating_add(1);
    // The first frame's content size (zstd can expand far more than
    // deflate: past the bound of `first_capacity` the buffer grows as it
    // fills).
    let content = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut out = Vec::with_capacity(first_capacity(content, data, limit));
    let decoder = zstd::stream::read::Decoder::with_buffer(data)
        .map_err(|e| DecompressError::Corrupt(e.to_string()))?;
    decoder
        .take(limit as u64)
        .read_to_end(&mut out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => DecompressError::Truncated,
            _ => DecompressError::Corrupt(e.to_string()),
        })?;
    if out.len() > max {
        return Err(DecompressError::TooLarge(max));
    }
    Ok(out)
}

/// The buffer reserved before decompressing `data`: the length the body
/// declares (a hint only: whatever the sender wrote), within what `data`
/// can hold (deflate expands at most [`MAX_RATIO`] to 1, so a small body
/// never reserves much) and `limit`.
fn first_capacity(declared: usize, data: &[u8], limit: usize) -> usize {
    declared
        .min(data.len().saturating_mul(MAX_RATIO))
        .min(limit)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use proptest::prelude::*;

    use super::*;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("gzip");
        e.finish().expect("gzip")
    }

    /// What flate2's streaming reader makes of the same bytes.
    fn streamed(data: &[u8]) -> Result<Vec<u8>, ()> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|_| ())
    }

    /// What both formats must do: a body whole and up to the limit, two
    /// members or frames as one body, a body cut short, not the format.
    /// Returns the plain bytes and their compressed form.
    fn whole_limited_and_concatenated(
        compress: fn(&[u8]) -> Vec<u8>,
        decompress: Decompressor,
    ) -> (Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let z = compress(&plain);
        assert_eq!(decompress(&z, 100_000), Ok(plain.clone()));
        assert_eq!(
            decompress(&z, 99_999),
            Err(DecompressError::TooLarge(99_999))
        );
        let two = [compress(b"abc"), compress(b"defg")].concat();
        assert_eq!(decompress(&two, 7), Ok(b"abcdefg".to_vec()));
        assert_eq!(decompress(&two, 6), Err(DecompressError::TooLarge(6)));
        assert_eq!(
            decompress(&z[..z.len() - 3], 1 << 20),
            Err(DecompressError::Truncated)
        );
        assert!(matches!(
            decompress(b"not compressed", 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        // Nothing at all is a body cut short, as it is for flate2's
        // reader and for zstd itself.
        assert_eq!(decompress(b"", 1 << 20), Err(DecompressError::Truncated));
        (plain, z)
    }

    #[test]
    fn a_body_inflates_whole_and_up_to_the_limit() {
        // As the receivers find it by name.
        let gunzip_named = for_encoding("gzip").expect("gzip");
        let (plain, z) = whole_limited_and_concatenated(gzip, gunzip_named);
        // What is reserved first: the trailer's length, within what the
        // body can hold and the limit.
        let declared = |b: &[u8]| u32::from_le_bytes(*b.last_chunk::<4>().expect("trailer"));
        assert_eq!(
            first_capacity(declared(&z) as usize, &z, usize::MAX),
            100_000
        );
        assert_eq!(first_capacity(declared(&z) as usize, &z, 5_000), 5_000);
        let mut huge = gzip(b"abc");
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            first_capacity(u32::MAX as usize, &huge, usize::MAX),
            n * 1032
        );
        assert!(matches!(
            gunzip(&huge, 1 << 30),
            Err(DecompressError::Corrupt(_))
        ));
        // A trailer that understates the length: the buffer grows.
        let mut lying = z.clone();
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            gunzip(&lying, 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        let understated = [gzip(&plain), gzip(b"x")].concat();
        let mut want = plain;
        want.push(b'x');
        assert_eq!(gunzip(&understated, 1 << 20), Ok(want));
        assert_eq!(gunzip(&z[..20], 1 << 20), Err(DecompressError::Truncated));
    }

    fn zstd(b: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(b, 1).expect("zstd")
    }

    #[test]
    fn a_zstd_body_decompresses_whole_and_up_to_the_limit() {
        assert!(for_encoding("snappy").is_none());
        let unzstd_named = for_encoding("zstd").expect("zstd");
        let (plain, _) = whole_limited_and_concatenated(zstd, unzstd_named);
        // A frame without its content size (as streaming encoders write it).
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd");
        std::io::Write::write_all(&mut e, &plain).expect("zstd");
        let streamed = e.finish().expect("zstd");
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&streamed),
            Ok(None)
        ));
        assert_eq!(unzstd(&streamed, 1 << 20), Ok(plain));
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).expect("zlib");
        e.finish().expect("zlib")
    }

    #[test]
    fn a_deflate_body_inflates_whole_and_up_to_the_limit() {
        let unzlib_named = for_encoding("deflate").expect("deflate");
        let unzlib_alias = for_encoding("zlib").expect("zlib");
        assert_eq!(unzlib_alias(&zlib(b"abc"), 3), Ok(b"abc".to_vec()));
        let (plain, z) = whole_limited_and_concatenated(zlib, unzlib_named);
        // A wrong checksum, and a gzip body (another format) named deflate.
        let mut bad = z.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(matches!(
            unzlib(&bad, 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        assert!(matches!(
            unzlib(&gzip(&plain), 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
    }

    /// Bodies of one to three members or frames of `compress`, then cut
    /// short, with a byte changed, or with bytes after (or as they are).
    fn damaged(compress: fn(&[u8]) -> Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        (
            prop::collection::vec(prop::collection::vec(0u8..4, 0..3000), 1..4),
            prop::option::of(any::<prop::sample::Index>()),
            prop::option::of((any::<prop::sample::Index>(), 1u8..=255)),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(move |(parts, cut, flip, tail)| {
                let mut z: Vec<u8> = parts.iter().flat_map(|p| compress(p)).collect();
                if let Some((at, x)) = flip {
                    let i = at.index(z.len());
                    z[i] ^= x;
                }
                if let Some(at) = cut {
                    z.truncate(at.index(z.len()));
                }
                z.extend_from_slice(&tail);
                z
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Against flate2's streaming reader: the same bytes where it reads
        /// them, an error where it has one.
        #[test]
        fn it_inflates_what_the_streaming_reader_does(z in damaged(gzip)) {
            prop_assert_eq!(gunzip(&z, usize::MAX).map_err(|_| ()), streamed(&z));
        }

        /// Against flate2's zlib reader, likewise.
        #[test]
        fn it_inflates_deflate_as_the_zlib_reader_does(z in damaged(zlib)) {
            let streamed = crate::fuzzing::zlib_streamed(&z, u64::MAX).map_err(drop);
            prop_assert_eq!(unzlib(&z, usize::MAX).map_err(drop), streamed);
        }

        /// Against zstd's own whole-body decoder, likewise.
        #[test]
        fn it_decompresses_zstd_as_zstd_does(z in damaged(zstd)) {
            let whole = zstd::stream::decode_all(&z[..]).map_err(|_| ());
            prop_assert_eq!(unzstd(&z, usize::MAX).map_err(|_| ()), whole);
        }
    }
}
