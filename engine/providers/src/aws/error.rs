//! Classification of AWS SDK errors into [`StepError`]s.
//!
//! Rules (from the AWS SDK's retry classifier and the EC2 error-code reference,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>): throttling
//! codes, HTTP 5xx, EC2's server-side codes, timeouts, dispatch (connection) failures and
//! unparsable responses are transient; every other service error (invalid parameters, missing
//! resources, authorization failures) is permanent, as is a request that cannot be built (for
//! example when no credentials can be resolved). Messages never contain credentials: they carry
//! the operation, the region, the error code and AWS's message only.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use tkgops_domain::executor::StepError;

/// Error codes meaning "slow down" (AWS SDK `THROTTLING_ERRORS` plus EC2's `RequestLimitExceeded`).
pub const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Server-side error codes EC2 documents as "retry the request" (errors-overview, server errors).
pub const SERVER_CODES: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// The EC2 error code of `err` (`ProvideErrorMetadata::code`), if the service answered with one.
pub fn error_code<E>(err: &SdkError<E, HttpResponse>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.as_service_error().and_then(|e| e.code())
}

/// Whether `err` is worth retrying, per the module rules.
///
/// Takes any EC2 operation error. Returns `true` for throttling, 5xx, server-side codes,
/// timeouts, dispatch failures and unparsable responses.
pub fn is_transient<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ConstructionFailure(_) => false,
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            THROTTLING_CODES.contains(&code)
                || SERVER_CODES.contains(&code)
                || se.raw().status().is_server_error()
        }
        _ => false,
    }
}

/// Converts an SDK error of EC2 operation `op` (e.g. `DescribeVpcs`) in `region` into a
/// [`StepError`], transient or permanent per [`is_transient`].
///
/// The message is `"<op> in <region> failed: <code>: <message>"` for service errors and names
/// the failure class (timeout, connection, unparsable response, request construction)
/// otherwise. It never contains credentials.
pub fn classify<E>(op: &str, region: &str, err: SdkError<E, HttpResponse>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let transient = is_transient(&err);
    let detail = match &err {
        SdkError::ServiceError(se) => format!(
            "{} (HTTP {}): {}",
            se.err().code().unwrap_or("unknown error code"),
            se.raw().status().as_u16(),
            se.err().message().unwrap_or("no message")
        ),
        SdkError::TimeoutError(_) => format!("timed out: {}", DisplayErrorContext(&err)),
        SdkError::DispatchFailure(_) => {
            format!(
                "could not reach the EC2 endpoint: {}",
                DisplayErrorContext(&err)
            )
        }
        SdkError::ResponseError(_) => format!("unparsable response: {}", DisplayErrorContext(&err)),
        SdkError::ConstructionFailure(_) => format!(
            "request could not be built (are AWS credentials configured?): {}",
            DisplayErrorContext(&err)
        ),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let msg = format!("{op} in {region} failed: {detail}");
    if transient {
        StepError::Transient(msg)
    } else {
        StepError::Permanent(msg)
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsError;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<DescribeVpcsError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("boom").build();
        let status = status.try_into().unwrap_or_else(|_| unreachable!());
        SdkError::service_error(
            DescribeVpcsError::generic(meta),
            HttpResponse::new(status, "".into()),
        )
    }

    #[test]
    fn throttling_and_5xx_are_transient() {
        for (code, status) in [
            ("RequestLimitExceeded", 503),
            ("Throttling", 400),
            ("InternalError", 500),
            ("Whatever", 502),
        ] {
            let err = classify("DescribeVpcs", "us-west-2", service_error(code, status));
            assert!(err.is_transient(), "{code} {status}: {err:?}");
        }
    }

    #[test]
    fn client_errors_are_permanent_and_named() {
        let err = classify(
            "DescribeVpcs",
            "us-west-2",
            service_error("UnauthorizedOperation", 403),
        );
        assert_eq!(
            err,
            StepError::Permanent(
                "DescribeVpcs in us-west-2 failed: UnauthorizedOperation (HTTP 403): boom".into()
            )
        );
    }

    #[test]
    fn dispatch_and_timeouts_are_transient() {
        let e: SdkError<DescribeVpcsError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(is_transient(&e));
        let e: SdkError<DescribeVpcsError, HttpResponse> =
            SdkError::construction_failure("no credentials");
        assert!(!is_transient(&e));
    }
}
