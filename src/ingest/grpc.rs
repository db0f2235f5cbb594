//! OTLP/gRPC `TraceService/Export`, decoding requests with the lean
//! zero-copy schema ([`crate::lean`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder,
};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::decompress::for_encoding;
use super::{Export, Pipeline};
use crate::auth::{GrpcAuth, Token};
use crate::lean::view::RequestView;
use crate::live::Refusal;

/// The one place where refusals become gRPC statuses: overload is
/// `UNAVAILABLE` with a `google.rpc.RetryInfo` delay, as the OTLP
/// specification asks; a request that can never fit is `INVALID_ARGUMENT`.
fn status(r: Refusal) -> Status {
    if r.retryable() {
        let details = ErrorDetails::with_retry_info(Some(r.retry_after()));
        Status::with_error_details(Code::Unavailable, r.to_string(), details)
    } else {
        Status::invalid_argument(r.to_string())
    }
}

/// The path of OTLP's trace export method.
pub const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A request's bytes, read in place ([`RequestView`]).
type Decoded = Bytes;

/// Requests are split off the receive buffer and checked; responses are
/// encoded with the full OTLP types.
#[derive(Clone, Copy, Debug, Default)]
struct LeanCodec;

impl Codec for LeanCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Decoded;
    type Encoder = LeanCodec;
    type Decoder = LeanCodec;

    fn encoder(&mut self) -> Self::Encoder {
        LeanCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanCodec
    }
}

impl Encoder for LeanCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for LeanCodec {
    type Item = Decoded;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Decoded>, Status> {
        // Splits the message off the receive buffer without copying it; the
        // handler checks it.
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    /// The receive buffer starts at 512 KiB, so that a typical batch (512
    /// spans, 100 to 250 KB) lands in it without being copied as it grows:
    /// once a message's header is read, tonic reserves the message's length
    /// again beyond what the buffer already holds of it.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(512 * 1024, 32 * 1024)
    }
}

/// The gRPC receiver: `TraceService/Export` and nothing else.
#[derive(Clone)]
pub struct GrpcReceiver {
    pipeline: Arc<Pipeline>,
    max_message: usize,
}

impl NamedService for GrpcReceiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct ExportMethod(Arc<Pipeline>);

impl UnaryService<Decoded> for ExportMethod {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Decoded>) -> Self::Future {
        let pipeline = Arc::clone(&self.0);
        Box::pin(async move {
            export(&pipeline, request.into_inner())
                .await
                .map(tonic::Response::new)
        })
    }
}

/// Checks and takes one export request's message.
async fn export(pipeline: &Pipeline, raw: Bytes) -> Result<ExportTraceServiceResponse, Status> {
    if pipeline.stops_at_receive() {
        return Ok(ExportTraceServiceResponse::default());
    }
    let view = RequestView::parse_framing(&raw)
        .map_err(|e| Status::invalid_argument(format!("not an OTLP trace export: {e}")))?;
    pipeline
        .handle(Export::Wire(view, &raw))
        .await
        .map_err(status)
}

/// A request body read whole by [`read_body`].
enum Received {
    /// One uncompressed message, sliced from what was received.
    Message(Bytes),
    /// One compressed message (without its frame header), and the whole
    /// body, for tonic when the request's encoding is not inflated here.
    Compressed(Bytes, Bytes),
    /// Refused before it was all read (over the size limit, or cut off).
    Refused(Status),
    /// Anything else, handed whole to tonic to answer as gRPC does.
    Other(Bytes),
}

/// Reads a request's body. A message that came in one HTTP/2
/// frame (a typical batch does: the frame size allowed is 1 MiB) is
/// sliced from that frame, where tonic's reader would copy it into its own
/// buffer; from several frames it is gathered once, into a buffer of the
/// declared size. A declared length over `max_message` is refused as soon
/// as it is read, and no more than that is read.
async fn read_body<B>(body: B, max_message: usize) -> Received
where
    B: http_body::Body,
    B::Error: Into<tonic::codegen::StdError>,
{
    use http_body_util::BodyExt;
    let too_large = |n: usize| {
        Status::invalid_argument(format!(
            "message of {n} bytes is over the limit of {max_message} bytes"
        ))
    };
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<bytes::BytesMut> = None;
    let mut total = 0usize;
    let mut declared: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let mut data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => return Received::Refused(Status::from_error(e.into())),
        };
        let chunk = data.copy_to_bytes(data.remaining());
        total = total.saturating_add(chunk.len());
        match (&first, &mut gathered) {
            (None, _) => first = Some(chunk),
            (Some(f), None) => {
                let want = declared.map_or(0, |n| n + 5).max(total);
                let mut b = bytes::BytesMut::with_capacity(want);
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                gathered = Some(b);
            }
            (Some(_), Some(b)) => b.extend_from_slice(&chunk),
        }
        if declared.is_none() {
            let head = gathered.as_deref().or(first.as_deref()).unwrap_or_default();
            if let Some(h) = head.first_chunk::<5>() {
                let n = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                if n > max_message {
                    return Received::Refused(too_large(n));
                }
                declared = Some(n);
            }
        }
        // No more than the largest message (and one frame) is ever held.
        if total > max_message.saturating_add(5) {
            return Received::Refused(too_large(total));
        }
    }
    let all = match gathered {
        Some(b) => b.freeze(),
        None => first.unwrap_or_default(),
    };
    match (all.first(), declared) {
        (Some(0), Some(n)) if all.len() == n + 5 => Received::Message(all.slice(5..)),
        (Some(1), Some(n)) if all.len() == n + 5 => Received::Compressed(all.slice(5..), all),
        _ => Received::Other(all),
    }
}

/// A gRPC length-prefixed message: compressed flag, u32 big-endian length, data.
pub fn grpc_frame(data: &[u8], compressed: bool) -> Bytes {
    let mut b = bytes::BytesMut::with_capacity(5 + data.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    b.put_slice(data);
    b.freeze()
}

/// The answer to an export taken in place: the response message, then the
/// `OK` status in the trailers (uncompressed: a client that offers gzip
/// also takes identity).
fn ok_response(resp: &ExportTraceServiceResponse) -> http::Response<tonic::body::Body> {
    use http_body_util::BodyExt;
    let framed = grpc_frame(&prost::Message::encode_to_vec(resp), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(framed)
        .map_err(|never: Infallible| match never {})
        .with_trailers(std::future::ready(Some(Ok::<_, Status>(trailers))));
    let mut r = http::Response::new(tonic::body::Body::new(body));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-accept-encoding",
        http::HeaderValue::from_static("gzip,zstd,deflate"),
    );
    r
}

impl<B> Service<http::Request<B>> for GrpcReceiver
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT {
            return Box::pin(async {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let pipeline = Arc::clone(&self.pipeline);
        let max_message = self.max_message;
        Box::pin(async move {
            let mut grpc = Grpc::new(LeanCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max_message);
            let decompress = match req.headers().get("grpc-encoding") {
                None => None,
                Some(e) if e == "identity" => None,
                Some(e) => match e.to_str().ok().and_then(for_encoding) {
                    Some(d) => Some(d),
                    None => return Ok(grpc.unary(ExportMethod(pipeline), req).await),
                },
            };
            // Uncompressed, the usual case, read in place; gzip, zstd and
            // deflate decompressed here into one buffer (see `decompress`).
            let (parts, body) = req.into_parts();
            let answer = |r: Result<ExportTraceServiceResponse, Status>| match r {
                Ok(resp) => ok_response(&resp),
                Err(s) => s.into_http(),
            };
            Ok(match (read_body(body, max_message).await, decompress) {
                (Received::Message(raw), _) => answer(export(&pipeline, raw).await),
                (Received::Compressed(z, _), Some(decompress)) => {
                    match decompress(&z, max_message) {
                        Ok(raw) => answer(export(&pipeline, Bytes::from(raw)).await),
                        Err(e) => {
                            Status::invalid_argument(format!("compressed message: {e}")).into_http()
                        }
                    }
                }
                (Received::Refused(s), _) => s.into_http(),
                (Received::Compressed(_, all) | Received::Other(all), _) => {
                    let req = http::Request::from_parts(parts, http_body_util::Full::new(all));
                    grpc.unary(ExportMethod(pipeline), req).await
                }
            })
        })
    }
}

/// The tonic service: gzip, zstd and deflate accepted, `max_message` bytes at most,
/// behind the bearer-token check when a token is set.
pub fn service(
    pipeline: Arc<Pipeline>,
    max_message: usize,
    token: Option<Token>,
) -> InterceptedService<GrpcReceiver, GrpcAuth> {
    InterceptedService::new(
        GrpcReceiver {
            pipeline,
            max_message,
        },
        GrpcAuth(token),
    )
}

/// The gRPC library answers a message over the size limit with
/// `OUT_OF_RANGE` before tpsgap sees it, a code the OTLP specification lists
/// as retryable: a client would send the same message again and again. This
/// rewrites it to `INVALID_ARGUMENT`, which clients do not retry (tpsgap
/// itself never answers `OUT_OF_RANGE`).
pub fn too_large_is_not_retryable<B>(mut resp: axum::http::Response<B>) -> axum::http::Response<B> {
    if resp.headers().get("grpc-status").is_some_and(|v| v == "11") {
        resp.headers_mut()
            .insert("grpc-status", axum::http::HeaderValue::from_static("3"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    use super::{grpc_frame, read_body, Received};

    /// `framed` cut at `cuts`, one HTTP/2 frame per piece.
    fn body(
        framed: &Bytes,
        cuts: &[usize],
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        let mut pieces = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain([&framed.len()]) {
            pieces.push(Ok(Frame::data(framed.slice(at..c))));
            at = c;
        }
        StreamBody::new(futures_util::stream::iter(pieces))
    }

    #[tokio::test]
    async fn a_message_reads_whole_from_any_frames_and_in_place_from_one() {
        let msg: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let framed = grpc_frame(&msg, false);
        for cuts in [
            vec![],
            vec![1],
            vec![3],
            vec![5],
            vec![2, 4, 100],
            vec![304],
        ] {
            match read_body(body(&framed, &cuts), 1000).await {
                Received::Message(m) => {
                    assert_eq!(&m[..], &msg[..], "cut at {cuts:?}");
                    if cuts.is_empty() {
                        // Sliced from the frame received, not copied.
                        assert_eq!(m.as_ptr(), framed[5..].as_ptr());
                    }
                }
                _ => panic!("cut at {cuts:?}: not read as one message"),
            }
        }
    }

    #[tokio::test]
    async fn anything_but_one_message_goes_to_tonic_whole_and_too_large_is_refused() {
        let msg = vec![7u8; 300];
        // Over the limit: refused as soon as the length is read, not retryable.
        for cuts in [vec![], vec![2], vec![5, 6]] {
            match read_body(body(&grpc_frame(&msg, false), &cuts), 299).await {
                Received::Refused(s) => {
                    assert_eq!(s.code(), tonic::Code::InvalidArgument);
                    assert!(s.message().contains("300 bytes"), "{}", s.message());
                }
                _ => panic!("cut at {cuts:?}: not refused"),
            }
        }
        // One compressed message: the message, and the body for tonic.
        let z = grpc_frame(&msg, true);
        match read_body(body(&z, &[3, 100]), 1000).await {
            Received::Compressed(m, all) => assert_eq!((&m[..], all), (&msg[..], z)),
            _ => panic!("a compressed message not read as one"),
        }
        // Two messages, a message cut short (compressed or not), nothing:
        // as received.
        let two = Bytes::from([grpc_frame(&msg, false), grpc_frame(&msg, false)].concat());
        let cut = grpc_frame(&msg, false).slice(..200);
        let cut_z = grpc_frame(&msg, true).slice(..200);
        for all in [two, cut, cut_z, Bytes::new()] {
            match read_body(body(&all, &[]), 1000).await {
                Received::Other(got) => assert_eq!(got, all),
                _ => panic!("{} bytes: not handed on whole", all.len()),
            }
        }
    }
}
