//! Compressed request bodies (gzip and zstd), decompressed into one
//! buffer, up to a limit.
//!
//! A gzip body is inflated in one call straight into a buffer sized from
//! its last member's trailer (ISIZE, the uncompressed length), where
//! reading it through `std::io::Read` grows a buffer step by step and
//! inflates a piece at a time; the inflater checks each member's CRC and
//! length. Concatenated members are one body, as
//! `flate2::read::MultiGzDecoder` reads them. A zstd body is read into a
//! buffer sized from its first frame's content size, when the frame has
//! one; concatenated frames are one body, as zstd's own decoder reads them.

/// The most deflate data expands (a 258-byte match in about two bits).
const MAX_RATIO: usize = 1032;

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

/// The bytes `data` inflates to, at most `max` of them.
///
/// # Errors
/// [`DecompressError`]: over `max`, cut short, or not valid gzip.
pub fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    use flate2::{Decompress, FlushDecompress, Status};
    // One more than `max` is room enough to know it is over.
    let limit = max.saturating_add(1);
    let mut out = Vec::with_capacity(first_capacity(data, limit));
    let mut rest = data;
    loop {
        let mut z = Decompress::new_gzip(15);
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
    // The content size is a hint, as a gzip trailer is (see
    // `first_capacity`): of the first frame alone, and whatever the sender
    // wrote. zstd can expand far more than deflate; past the bound below
    // the buffer grows as it fills.
    let hint = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
        .min(data.len().saturating_mul(MAX_RATIO))
        .min(limit);
    let mut out = Vec::with_capacity(hint);
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

/// The buffer reserved before inflating `data`: its trailer's length, a
/// hint only (modulo 2^32, of the last member alone, and whatever the
/// sender wrote), within what `data` can hold (deflate expands at most
/// [`MAX_RATIO`] to 1, so a small body never reserves much) and `limit`.
fn first_capacity(data: &[u8], limit: usize) -> usize {
    data.last_chunk::<4>()
        .map_or(0, |t| u32::from_le_bytes(*t) as usize)
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

    #[test]
    fn a_body_inflates_whole_and_up_to_the_limit() {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let z = gzip(&plain);
        assert_eq!(gunzip(&z, 100_000), Ok(plain.clone()));
        assert_eq!(gunzip(&z, 99_999), Err(DecompressError::TooLarge(99_999)));
        // Two members are one body.
        let two = [gzip(b"abc"), gzip(b"defg")].concat();
        assert_eq!(gunzip(&two, 7), Ok(b"abcdefg".to_vec()));
        assert_eq!(gunzip(&two, 6), Err(DecompressError::TooLarge(6)));
        // A trailer that understates the length: the buffer grows.
        // What is reserved first: the trailer's length, within what the
        // body can hold and the limit.
        assert_eq!(first_capacity(&z, usize::MAX), 100_000);
        assert_eq!(first_capacity(&z, 5_000), 5_000);
        let mut huge = gzip(b"abc");
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(first_capacity(&huge, usize::MAX), n * 1032);
        assert!(matches!(
            gunzip(&huge, 1 << 30),
            Err(DecompressError::Corrupt(_))
        ));
        assert_eq!(first_capacity(b"abc", usize::MAX), 0);
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
        assert_eq!(
            gunzip(&z[..z.len() - 3], 1 << 20),
            Err(DecompressError::Truncated)
        );
        assert_eq!(gunzip(&z[..20], 1 << 20), Err(DecompressError::Truncated));
        assert!(matches!(
            gunzip(b"not gzip", 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
    }

    fn zstd(b: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(b, 1).expect("zstd")
    }

    #[test]
    fn a_zstd_body_decompresses_whole_and_up_to_the_limit() {
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let z = zstd(&plain);
        assert_eq!(unzstd(&z, 100_000), Ok(plain.clone()));
        assert_eq!(unzstd(&z, 99_999), Err(DecompressError::TooLarge(99_999)));
        // Two frames are one body.
        let two = [zstd(b"abc"), zstd(b"defg")].concat();
        assert_eq!(unzstd(&two, 7), Ok(b"abcdefg".to_vec()));
        assert_eq!(unzstd(&two, 6), Err(DecompressError::TooLarge(6)));
        // A frame without its content size (as streaming encoders write it).
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd");
        std::io::Write::write_all(&mut e, &plain).expect("zstd");
        let streamed = e.finish().expect("zstd");
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&streamed),
            Ok(None)
        ));
        assert_eq!(unzstd(&streamed, 1 << 20), Ok(plain));
        assert_eq!(
            unzstd(&z[..z.len() - 3], 1 << 20),
            Err(DecompressError::Truncated)
        );
        assert!(matches!(
            unzstd(b"not zstd", 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        // Nothing at all is a frame cut short, as it is for zstd itself
        // and for gzip.
        assert_eq!(unzstd(b"", 1 << 20), Err(DecompressError::Truncated));
        assert_eq!(gunzip(b"", 1 << 20), Err(DecompressError::Truncated));
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

        /// Against zstd's own whole-body decoder, likewise.
        #[test]
        fn it_decompresses_zstd_as_zstd_does(z in damaged(zstd)) {
            let whole = zstd::stream::decode_all(&z[..]).map_err(|_| ());
            prop_assert_eq!(unzstd(&z, usize::MAX).map_err(|_| ()), whole);
        }
    }
}
