//! OTLP/gRPC `TraceService/Export`, decoding requests with the lean
//! zero-copy schema ([`crate::lean`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{
    BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder,
};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::service::interceptor::InterceptedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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
            let raw = request.into_inner();
            let view = RequestView::parse_framing(&raw)
                .map_err(|e| Status::invalid_argument(format!("not an OTLP trace export: {e}")))?;
            pipeline
                .handle(Export::Wire(view, &raw))
                .await
                .map(tonic::Response::new)
                .map_err(status)
        })
    }
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
            Ok(grpc.unary(ExportMethod(pipeline), req).await)
        })
    }
}

/// The tonic service: gzip and zstd accepted, `max_message` bytes at most,
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
