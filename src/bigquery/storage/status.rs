//! gRPC statuses of the Storage Write API as the port's [`BqError`]: the code, the message, and the
//! `StorageError` detail when Google attaches one (`STREAM_FINALIZED`, `OFFSET_OUT_OF_RANGE`, …).

use bqsink_actors::bigquery::{BqError, GrpcCode};
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::cloud::bigquery::storage::v1::{
    storage_error::StorageErrorCode, StorageError,
};
use googleapis_tonic_google_cloud_bigquery_storage_v1::google::rpc;
use prost::Message as _;

const STORAGE_ERROR_TYPE: &str =
    "type.googleapis.com/google.cloud.bigquery.storage.v1.StorageError";

/// A call's failure status.
pub(super) fn from_status(status: &tonic::Status) -> BqError {
    let details = rpc::Status::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    error(status.code() as i32, status.message(), &details)
}

/// An in-band `AppendRowsResponse.error`.
pub(super) fn from_rpc(status: &rpc::Status) -> BqError {
    error(status.code, &status.message, &status.details)
}

fn error(code: i32, message: &str, details: &[prost_types::Any]) -> BqError {
    let mut message = message.to_owned();
    for any in details {
        if any.type_url == STORAGE_ERROR_TYPE {
            if let Ok(e) = StorageError::decode(any.value.as_slice()) {
                let name = StorageErrorCode::try_from(e.code)
                    .map(|c| c.as_str_name())
                    .unwrap_or("STORAGE_ERROR");
                message.push_str(&format!(" [{name}: {} {}]", e.entity, e.error_message));
            }
        }
    }
    BqError::Grpc {
        code: GrpcCode::from_i32(code).unwrap_or(GrpcCode::Unknown),
        message,
    }
}

/// Whether a stream is gone for good: finalized (it takes no appends and no flushes) or not found
/// (deleted, expired).
pub(super) fn is_stream_gone(e: &BqError) -> bool {
    match e {
        BqError::Grpc { code, message } => {
            let m = message.to_ascii_lowercase();
            *code == GrpcCode::NotFound
                || m.contains("finalized")
                || m.contains("stream_not_found")
                || m.contains("stream not found")
        }
        _ => false,
    }
}

/// Whether the error says the table's schema and the rows' descriptor disagree (a column was
/// dropped or changed, or fields were added that this connection does not know yet): the row
/// format is fetched again and a new connection opened.
pub(super) fn is_schema_mismatch(e: &BqError) -> bool {
    match e {
        BqError::Grpc { code, message } => {
            let m = message.to_ascii_lowercase();
            matches!(
                code,
                GrpcCode::InvalidArgument | GrpcCode::FailedPrecondition
            ) && (m.contains("schema") || m.contains("descriptor") || m.contains("field"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_error_detail_is_named_in_the_message() {
        let detail = StorageError {
            code: StorageErrorCode::StreamFinalized as i32,
            entity: "projects/p/datasets/d/tables/t/streams/s".into(),
            error_message: "finalized".into(),
        };
        let status = rpc::Status {
            code: 9,
            message: "Stream is finalized".into(),
            details: vec![prost_types::Any {
                type_url: STORAGE_ERROR_TYPE.into(),
                value: detail.encode_to_vec(),
            }],
        };
        let e = from_rpc(&status);
        assert_eq!(
            e.to_string(),
            "FAILED_PRECONDITION from the BigQuery Storage Write API: Stream is finalized \
             [STREAM_FINALIZED: projects/p/datasets/d/tables/t/streams/s finalized]"
        );
        let tonic_status = tonic::Status::with_details(
            tonic::Code::FailedPrecondition,
            "Stream is finalized",
            status.encode_to_vec().into(),
        );
        assert_eq!(from_status(&tonic_status), e);
        assert!(!e.is_retryable());
        let unavailable = from_status(&tonic::Status::unavailable("try later"));
        assert!(unavailable.is_retryable());
    }
}
