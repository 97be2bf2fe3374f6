//! The admin HTTP API against a running pipeline (mock Kafka cluster, BigQuery fake): pause holds
//! records back and resume delivers them, status reports partitions and committed offsets, the
//! token is enforced, restart recovers a failed pipeline and restarts a running one.

mod common;
#[path = "support/admin.rs"]
mod support;

use std::time::Duration;

use bqsink_actors::config::{OnFailure, SinkFailure};
use bqsink_devtools::sink::Reply;
use common::*;
use support::*;

#[test]
fn pause_holds_records_back_resume_delivers_them_and_status_reports_offsets() {
    const TOPIC: &str = "paused";
    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    let sink = sink();
    let mut config = service_config(&bootstrap, "g-pause", TOPIC, &sink);
    config.admin.token = Some("s3cret".into());
    let svc = spawn(&config);
    let admin = Admin::new(&svc, Some("s3cret"));
    let anonymous = Admin::new(&svc, None);
    let wrong = Admin::new(&svc, Some("guess"));

    produce(&bootstrap, TOPIC, &unique_events(300, "a", 31));
    wait_fully_committed(&bootstrap, "g-pause", TOPIC, 2, Duration::from_secs(60));
    let ends = watermarks(&bootstrap, TOPIC, 2);

    // Probes and metrics need no token; status and the actions do.
    assert_eq!(anonymous.get("/healthz").0, 200);
    wait_until(Duration::from_secs(30), "ready", || {
        anonymous.get("/readyz").0 == 200
    });
    assert_eq!(anonymous.get("/metrics").0, 200);
    assert_eq!(anonymous.get("/status").0, 401);
    assert_eq!(wrong.get("/status").0, 401);
    assert_eq!(anonymous.post("/pause"), 401);
    assert_eq!(wrong.post("/pause"), 401);
    assert!(!svc.state.paused(), "an unauthorized pause changes nothing");

    wait_until(Duration::from_secs(30), "status caught up", || {
        caught_up(&admin.status(), &ends)
    });
    let status = admin.status();
    assert_eq!(status["state"], "RUNNING");
    assert!(all_partitions(&status, 2, "RUNNING"), "{status}");
    assert_eq!(status["counters"]["written"], 300);

    assert_eq!(admin.post("/pause"), 202);
    let status = admin.status();
    assert_eq!(status["state"], "PAUSED");
    assert!(all_partitions(&status, 2, "PAUSED"), "{status}");
    produce(&bootstrap, TOPIC, &unique_events(200, "b", 32));
    // The pipeline sees the new records as lag but does not read them.
    wait_until(Duration::from_secs(30), "lag of 200 in status", || {
        let p = partitions(&admin.status());
        p.values()
            .map(|p| p["lag"].as_i64().unwrap_or(0))
            .sum::<i64>()
            == 200
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.total_rows(), 300, "nothing is written while paused");
    assert_eq!(
        svc.stats.snapshot().consumed,
        300,
        "nothing is read while paused"
    );
    assert_eq!(
        anonymous.get("/readyz").0,
        200,
        "a paused pipeline is ready"
    );

    assert_eq!(admin.post("/resume"), 202);
    wait_fully_committed(&bootstrap, "g-pause", TOPIC, 2, Duration::from_secs(60));
    assert_eq!(sink.total_rows(), 500);
    let ends = watermarks(&bootstrap, TOPIC, 2);
    wait_until(Duration::from_secs(30), "status caught up again", || {
        caught_up(&admin.status(), &ends)
    });
    let status = admin.status();
    assert_eq!(status["state"], "RUNNING");
    assert!(all_partitions(&status, 2, "RUNNING"), "{status}");
    assert_eq!(sink.id_stats(), (500, 0));
    assert_eq!(svc.shutdown().unwrap(), 0);
}

#[test]
fn restart_recovers_a_failed_pipeline_and_restarts_a_running_one() {
    const TOPIC: &str = "restarted";
    let (_cluster, bootstrap) = cluster(TOPIC, 1);
    let sink = sink();
    // The table does not exist yet: BigQuery answers 404 (a sink failure); with
    // errors.sink_failure = "stop" the pipeline stops once it has lasted retry_timeout_ms.
    sink.set_hook(|_| Reply::Fail {
        status: 404,
        reason: "notFound".into(),
    });
    let mut config = service_config(&bootstrap, "g-restart", TOPIC, &sink);
    config.admin.on_failure = OnFailure::Wait;
    config.errors.sink_failure = SinkFailure::Stop;
    config.errors.retry_timeout_ms = 1_000;
    let svc = spawn(&config);
    let admin = Admin::new(&svc, None);
    produce(&bootstrap, TOPIC, &unique_events(100, "r", 41));

    wait_until(Duration::from_secs(60), "FAILED", || {
        admin.status()["state"] == "FAILED"
    });
    let status = admin.status();
    assert!(
        status["error"].as_str().unwrap().contains("notFound"),
        "{status}"
    );
    let p = &partitions(&status)[&0];
    assert_eq!(p["state"], "FAILED");
    assert!(
        p["last_error"]["error"].as_str().unwrap().contains("404"),
        "{status}"
    );
    assert_eq!(
        admin.get("/readyz").0,
        503,
        "a failed pipeline is not ready"
    );
    assert_eq!(admin.get("/healthz").0, 200, "the process is up");
    assert!(!svc.is_finished(), "it waits for a restart");
    assert_eq!(sink.total_rows(), 0);
    assert_eq!(
        committed(&bootstrap, "g-restart", TOPIC, 1)[0].unwrap_or(0),
        0,
        "nothing is committed past the failed rows"
    );

    // The table now exists: restart reads again from the committed offset.
    sink.clear_hook();
    assert_eq!(admin.post("/restart"), 202);
    wait_fully_committed(&bootstrap, "g-restart", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(sink.total_rows(), 100);
    let status = admin.status();
    assert_eq!(status["state"], "RUNNING");
    assert_eq!(status["restarts"], 1);
    assert!(status["error"].is_null());

    // Restarting a running pipeline drains it, commits and joins again; nothing is written twice.
    assert_eq!(admin.post("/restart"), 202);
    wait_until(Duration::from_secs(60), "second restart", || {
        let s = admin.status();
        s["restarts"] == 2 && all_partitions(&s, 1, "RUNNING")
    });
    produce(&bootstrap, TOPIC, &unique_events(50, "s", 42));
    wait_fully_committed(&bootstrap, "g-restart", TOPIC, 1, Duration::from_secs(60));
    assert_eq!(sink.id_stats(), (150, 0));
    assert_eq!(svc.shutdown().unwrap(), 0);
}
