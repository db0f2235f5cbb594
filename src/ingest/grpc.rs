//! OTLP/gRPC `TraceService/Export`.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::Pipeline;
use crate::auth::{GrpcAuth, Token};
use crate::live::Refusal;
use tonic::service::interceptor::InterceptedService;

/// The gRPC receiver.
pub struct GrpcReceiver {
    pub pipeline: Arc<Pipeline>,
}

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

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.pipeline
            .handle(request.get_ref())
            .await
            .map(Response::new)
            .map_err(status)
    }
}

/// The tonic service: gzip and zstd accepted, `max_message` bytes at most,
/// behind the bearer-token check when a token is set.
pub fn service(
    pipeline: Arc<Pipeline>,
    max_message: usize,
    token: Option<Token>,
) -> InterceptedService<TraceServiceServer<GrpcReceiver>, GrpcAuth> {
    let svc = TraceServiceServer::new(GrpcReceiver { pipeline })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_message);
    InterceptedService::new(svc, GrpcAuth(token))
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
