//! OTLP receivers. gRPC and HTTP decode their requests and call the one
//! shared [`Pipeline::handle`]; each maps outcomes to its protocol's codes in
//! one function.

pub mod grpc;
pub mod http;

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::extract::Extractor;
use crate::live::{Engine, Now, Refusal};

/// At most this many rejection reasons are quoted in a partial success.
const MAX_REASONS: usize = 5;

/// Extraction plus the live engine: what every receiver calls.
pub struct Pipeline {
    pub extractor: Extractor,
    pub engine: Arc<Engine>,
}

impl Pipeline {
    /// Extracts and joins every span of a request.
    ///
    /// # Errors
    /// [`Refusal`] when the engine cannot take the batch now; nothing of it
    /// was applied and the client should retry.
    pub fn handle(
        &self,
        req: &ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, Refusal> {
        let mut items = Vec::new();
        self.extractor.request(req, |e| items.push(e));
        let now = Now::system(tokio::time::Instant::now().into_std());
        let out = self.engine.ingest(items, now)?;
        let partial_success = (!out.rejected.is_empty()).then(|| {
            let mut msg: Vec<String> = out
                .rejected
                .iter()
                .take(MAX_REASONS)
                .map(ToString::to_string)
                .collect();
            if out.rejected.len() > MAX_REASONS {
                msg.push(format!("and {} more", out.rejected.len() - MAX_REASONS));
            }
            ExportTracePartialSuccess {
                rejected_spans: out.rejected.len() as i64,
                error_message: msg.join("; "),
            }
        });
        Ok(ExportTraceServiceResponse { partial_success })
    }
}
