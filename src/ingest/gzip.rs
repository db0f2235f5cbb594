//! Gzip request bodies, inflated in one call into one buffer.
//!
//! A body is inflated straight into a buffer sized from its last member's
//! trailer (ISIZE, the uncompressed length), where reading it through
//! `std::io::Read` grows a buffer step by step and inflates a piece at a
//! time; the inflater checks each member's CRC and length. Concatenated
//! members are one body, as `flate2::read::MultiGzDecoder` reads them.

/// The most deflate data expands (a 258-byte match in about two bits).
const MAX_RATIO: usize = 1032;

/// Why a gzip body was not inflated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GzipError {
    /// It inflates to more than the limit.
    #[error("inflates to more than {0} bytes")]
    TooLarge(usize),
    /// It ends before its last member does.
    #[error("gzip stream ends too soon")]
    Truncated,
    /// Not gzip, or its data or trailer is wrong.
    #[error("{0}")]
    Corrupt(String),
}

/// The bytes `data` inflates to, at most `max` of them.
///
/// # Errors
/// [`GzipError`]: over `max`, cut short, or not valid gzip.
pub fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, GzipError> {
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
                    return Err(GzipError::TooLarge(max));
                }
                let more = out.len().max(4096).min(limit - out.len());
                out.reserve_exact(more);
            }
            let read = z.total_in() as usize;
            let written = out.len();
            let status = z
                .decompress_vec(&rest[read..], &mut out, FlushDecompress::Finish)
                .map_err(|e| GzipError::Corrupt(e.to_string()))?;
            if status == Status::StreamEnd {
                break;
            }
            // Room left and nothing taken or given: the input ended.
            let stalled = z.total_in() as usize == read && out.len() == written;
            if stalled && out.len() < out.capacity() {
                return Err(GzipError::Truncated);
            }
        }
        if out.len() > max {
            return Err(GzipError::TooLarge(max));
        }
        rest = &rest[z.total_in() as usize..];
        if rest.is_empty() {
            return Ok(out);
        }
    }
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
        assert_eq!(gunzip(&z, 99_999), Err(GzipError::TooLarge(99_999)));
        // Two members are one body.
        let two = [gzip(b"abc"), gzip(b"defg")].concat();
        assert_eq!(gunzip(&two, 7), Ok(b"abcdefg".to_vec()));
        assert_eq!(gunzip(&two, 6), Err(GzipError::TooLarge(6)));
        // A trailer that understates the length: the buffer grows.
        // What is reserved first: the trailer's length, within what the
        // body can hold and the limit.
        assert_eq!(first_capacity(&z, usize::MAX), 100_000);
        assert_eq!(first_capacity(&z, 5_000), 5_000);
        let mut huge = gzip(b"abc");
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(first_capacity(&huge, usize::MAX), n * 1032);
        assert!(matches!(gunzip(&huge, 1 << 30), Err(GzipError::Corrupt(_))));
        assert_eq!(first_capacity(b"abc", usize::MAX), 0);
        let mut lying = z.clone();
        let n = lying.len();
        lying[n - 4..].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            gunzip(&lying, 1 << 20),
            Err(GzipError::Corrupt(_))
        ));
        let understated = [gzip(&plain), gzip(b"x")].concat();
        let mut want = plain;
        want.push(b'x');
        assert_eq!(gunzip(&understated, 1 << 20), Ok(want));
        assert_eq!(
            gunzip(&z[..z.len() - 3], 1 << 20),
            Err(GzipError::Truncated)
        );
        assert_eq!(gunzip(&z[..20], 1 << 20), Err(GzipError::Truncated));
        assert!(matches!(
            gunzip(b"not gzip", 1 << 20),
            Err(GzipError::Corrupt(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// Against flate2's streaming reader: the same bytes where it reads
        /// them, an error where it has one, for bodies of one to three
        /// members, cut short, with a byte changed, or with bytes after.
        #[test]
        fn it_inflates_what_the_streaming_reader_does(
            members in prop::collection::vec(prop::collection::vec(0u8..4, 0..3000), 1..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
            flip in prop::option::of((any::<prop::sample::Index>(), 1u8..=255)),
            tail in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut z: Vec<u8> = members.iter().flat_map(|m| gzip(m)).collect();
            if let Some((at, x)) = flip {
                let i = at.index(z.len());
                z[i] ^= x;
            }
            if let Some(at) = cut {
                z.truncate(at.index(z.len()));
            }
            z.extend_from_slice(&tail);
            prop_assert_eq!(gunzip(&z, usize::MAX).map_err(|_| ()), streamed(&z));
        }
    }
}
