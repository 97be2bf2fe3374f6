//! Tests of the retry loop against scripted BigQuery answers.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::*;

/// Answers from a script and records the rows of each request.
struct Scripted {
    answers: Mutex<VecDeque<Result<InsertAllResponse, BqError>>>,
    requests: Mutex<Vec<Vec<serde_json::Value>>>,
}

impl BigQuery for Scripted {
    fn insert_all(
        &self,
        _: &TableRef,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<InsertAllResponse, BqError>> {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        self.requests
            .lock()
            .unwrap()
            .push(v["rows"].as_array().unwrap().clone());
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(InsertAllResponse::default()));
        Box::pin(async move { answer })
    }
}

fn scripted(answers: Vec<Result<InsertAllResponse, BqError>>) -> Scripted {
    Scripted {
        answers: Mutex::new(answers.into()),
        requests: Mutex::default(),
    }
}

fn policy(timeout_ms: u64) -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_millis(timeout_ms),
        max_delay: Duration::from_millis(20),
        min_delay: Duration::from_millis(1),
        give_up: false,
    }
}

fn giving_up(timeout_ms: u64) -> RetryPolicy {
    RetryPolicy {
        give_up: true,
        ..policy(timeout_ms)
    }
}

fn http(status: u16, reason: &str) -> BqError {
    BqError::http(status, reason, "m")
}

/// Records what the hooks hear of sink failures: (class, failing) per failed attempt, and
/// successful requests.
#[derive(Default)]
struct SinkRecorder {
    errors: Mutex<Vec<(String, bool)>>,
    ok: std::sync::atomic::AtomicUsize,
}

impl RetryHooks for SinkRecorder {
    fn sink_error(&self, error: &BqError, failing: bool) {
        self.errors
            .lock()
            .unwrap()
            .push((error.to_string(), failing));
    }
    fn sink_ok(&self) {
        self.ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn row_err(index: usize, reason: &str) -> RowErrors {
    RowErrors {
        index,
        errors: vec![ErrorProto {
            reason: reason.into(),
            location: "n".into(),
            message: "bad".into(),
        }],
    }
}

fn entries(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{{\"json\":{{\"i\":{i}}}}}").into_bytes())
        .collect()
}

fn table() -> TableRef {
    TableRef {
        dataset: "d".into(),
        table: "t".into(),
    }
}

#[tokio::test]
async fn transient_errors_are_retried_until_success() {
    let bq = scripted(vec![
        Err(http(500, "backendError")),
        Err(http(429, "")),
        Err(BqError::Timeout),
        Err(http(403, "quotaExceeded")),
    ]);
    let e = entries(3);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &|_| true).await;
    assert_eq!(out.written, vec![0, 1, 2]);
    assert!(out.failed.is_empty());
    assert_eq!(out.retries, 4);
    assert_eq!(bq.requests.lock().unwrap().len(), 5);
}

#[test]
fn quota_exceeded_waits_longer_than_other_retryable_errors() {
    let policy = RetryPolicy {
        timeout: Duration::from_secs(300),
        max_delay: Duration::from_secs(60),
        min_delay: Duration::from_millis(100),
        give_up: false,
    };
    let next = Duration::from_millis(100);
    assert_eq!(retry_delay(next, &http(500, "backendError"), &policy), next);
    assert_eq!(
        retry_delay(next, &http(429, "rateLimitExceeded"), &policy),
        next
    );
    assert_eq!(
        retry_delay(next, &http(403, "quotaExceeded"), &policy),
        Duration::from_secs(1)
    );
    assert_eq!(
        retry_delay(Duration::from_secs(2), &http(403, "quotaExceeded"), &policy),
        Duration::from_secs(8)
    );
    assert_eq!(
        retry_delay(
            Duration::from_secs(30),
            &http(403, "quotaExceeded"),
            &policy
        ),
        policy.max_delay,
        "capped by errors.retry_delay_max_ms"
    );
}

#[tokio::test]
async fn errors_of_the_whole_request_are_sink_failures_retried_until_they_clear() {
    // 404 (table dropped, no auto-create), 401 after the token refresh, 403, 400 and an
    // unreadable 200: none of them makes a row "failed"; the same rows are sent again.
    let bq = scripted(vec![
        Err(http(404, "notFound")),
        Err(http(401, "unauthorized")),
        Err(http(403, "accessDenied")),
        Err(http(400, "invalid")),
        Err(BqError::Decode("EOF while parsing".into())),
    ]);
    let e = entries(2);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let hooks = SinkRecorder::default();
    let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &hooks).await;
    assert_eq!(out.written, vec![0, 1]);
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(out.sink_failure, None);
    assert_eq!(out.retries, 5);
    let requests = bq.requests.lock().unwrap();
    assert_eq!(requests.len(), 6);
    assert!(
        requests.iter().all(|r| *r == requests[0]),
        "every attempt carries the same rows (and insertIds)"
    );
    let errors = hooks.errors.lock().unwrap();
    assert_eq!(errors.len(), 5);
    assert!(
        errors.iter().all(|(_, failing)| !failing),
        "within the timeout"
    );
    assert_eq!(hooks.ok.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_sink_failure_past_the_timeout_is_reported_failing_and_still_retried() {
    let mut answers: Vec<_> = (0..40).map(|_| Err(http(503, "backendError"))).collect();
    answers.push(Ok(InsertAllResponse::default()));
    let bq = scripted(answers);
    let e = entries(3);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let hooks = SinkRecorder::default();
    let out = send_with_retry(&bq, &table(), &refs, policy(30), &hooks).await;
    assert_eq!(
        out.written,
        vec![0, 1, 2],
        "written once BigQuery recovered"
    );
    assert!(out.failed.is_empty());
    let errors = hooks.errors.lock().unwrap();
    assert_eq!(errors.len(), 40);
    assert!(!errors[0].1, "not failing at the first attempt");
    assert!(errors.last().unwrap().1, "failing after the timeout");
}

#[tokio::test]
async fn with_give_up_the_rows_come_back_unwritten_not_failed() {
    let bq = scripted((0..1000).map(|_| Err(http(503, ""))).collect());
    let e = entries(2);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let hooks = SinkRecorder::default();
    let out = send_with_retry(&bq, &table(), &refs, giving_up(100), &hooks).await;
    assert!(out.written.is_empty());
    assert!(
        out.failed.is_empty(),
        "a sink failure is never a failed row"
    );
    let sf = out.sink_failure.expect("gave up");
    assert_eq!(sf.rows, vec![0, 1]);
    assert!(matches!(sf.error, BqError::Http { status: 503, .. }));
    assert!(out.retries >= 2);
    assert!(hooks.errors.lock().unwrap().last().unwrap().1);
}

#[test]
fn retry_after_is_honoured() {
    let policy = policy(1000);
    let throttled = BqError::Http {
        status: 429,
        reason: "rateLimitExceeded".into(),
        message: "slow down".into(),
        retry_after: Some(Duration::from_secs(7)),
    };
    assert_eq!(
        retry_delay(Duration::from_millis(10), &throttled, &policy),
        Duration::from_secs(7),
        "longer than errors.retry_delay_max_ms: the server knows best"
    );
    let absurd = BqError::Http {
        status: 429,
        reason: "rateLimitExceeded".into(),
        message: "slow down".into(),
        retry_after: Some(Duration::from_secs(86_400)),
    };
    assert_eq!(
        retry_delay(Duration::from_millis(10), &absurd, &policy),
        Duration::from_secs(900)
    );
}

#[tokio::test]
async fn invalid_rows_fail_and_stopped_rows_are_resent_alone() {
    let resp = InsertAllResponse {
        insert_errors: vec![
            row_err(1, "invalid"),
            row_err(0, "stopped"),
            row_err(2, "stopped"),
            row_err(3, "stopped"),
        ],
    };
    let bq = scripted(vec![Ok(resp)]);
    let e = entries(4);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &|_| true).await;
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.failed[0].0, 1);
    assert!(
        out.failed[0].2.contains("invalid at n: bad"),
        "{:?}",
        out.failed
    );
    let mut written = out.written.clone();
    written.sort();
    assert_eq!(written, vec![0, 2, 3]);
    let requests = bq.requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    let resent: Vec<i64> = requests[1]
        .iter()
        .map(|r| r["json"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(
        resent,
        vec![0, 2, 3],
        "only the stopped rows are sent again"
    );
}

#[tokio::test]
async fn rows_of_revoked_partitions_are_abandoned_before_a_retry() {
    let bq = scripted(vec![Err(http(500, "backendError"))]);
    let e = entries(4);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    // Rows 1 and 3 belong to a partition revoked after the first attempt.
    let keep = |i: usize| calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 4 || i % 2 == 0;
    let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &keep).await;
    assert_eq!(out.written, vec![0, 2]);
    assert_eq!(out.abandoned, vec![1, 3]);
    let requests = bq.requests.lock().unwrap();
    assert_eq!(requests[1].len(), 2, "the retry carries only the kept rows");
}

#[tokio::test]
async fn hooks_hear_when_a_batch_waits_to_retry() {
    struct Recorder(Mutex<Vec<bool>>);
    impl RetryHooks for Recorder {
        fn retrying(&self, on: bool) {
            self.0.lock().unwrap().push(on);
        }
    }
    let e = entries(2);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let ok = Recorder(Mutex::default());
    send_with_retry(&scripted(vec![]), &table(), &refs, policy(10_000), &ok).await;
    assert!(ok.0.lock().unwrap().is_empty(), "no retry, no pause");
    let flaky = Recorder(Mutex::default());
    let bq = scripted(vec![Err(http(500, "")), Err(http(503, ""))]);
    let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &flaky).await;
    assert_eq!(out.written, vec![0, 1]);
    assert_eq!(
        *flaky.0.lock().unwrap(),
        vec![true, false],
        "paused once, resumed once"
    );
}

#[tokio::test]
async fn rows_of_failed_tables_are_not_created_failed_when_creation_is_refused() {
    // Not covered by auto-create (tables() is None here): a 404 stays a sink failure.
    let bq = scripted(vec![Err(http(404, "notFound")), Err(http(404, "notFound"))]);
    let e = entries(1);
    let refs: Vec<&[u8]> = e.iter().map(Vec::as_slice).collect();
    let out = send_with_retry(&bq, &table(), &refs, policy(10_000), &|_| true).await;
    assert_eq!(out.written, vec![0]);
    assert!(out.failed.is_empty());
}
