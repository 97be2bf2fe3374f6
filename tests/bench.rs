//! `bqsink bench` on small runs: it must finish and find that the sink received exactly the unique
//! good events, the duplicates were dropped, the malformed records reported and the offsets
//! committed (the bench checks all of it and exits 1 on a mismatch). No speed is asserted: the
//! figures are the benchmark's to print, not the tests'.

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bqsink"))
        .arg("bench")
        .args(args)
        .output()
        .expect("running bqsink bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "bqsink bench failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("check          OK"), "{stdout}");
    for figure in ["peak RSS", "CPU  "] {
        assert!(stdout.contains(figure), "no {figure} in\n{stdout}");
    }
    stdout
}

/// Three rounds of backlog on one partition (the worker pauses and resumes between them), with
/// more duplicates and malformed records than the default.
#[test]
fn throughput_mode_in_rounds_delivers_exactly_the_unique_events() {
    let out = bench(&[
        "--records",
        "90000",
        "--partitions",
        "1",
        "--duplicates",
        "0.05",
        "--malformed",
        "0.01",
    ]);
    for figure in ["raw consume", "pipeline", "ratio"] {
        assert!(out.contains(figure), "no {figure} in\n{out}");
    }
}

#[test]
fn latency_mode_delivers_exactly_the_unique_events() {
    let out = bench(&["--records", "10000", "--partitions", "2", "--rate", "20000"]);
    assert!(out.contains("latency        p50"), "{out}");
}

/// `--format avro|protobuf|json-schema`: the same events in each registry format through a local
/// Schema Registry, on both write paths; the sink must receive exactly the unique good events
/// (malformed ones are not in the wire format: reported).
#[test]
fn registry_records_deliver_exactly_the_unique_events() {
    for format in ["avro", "protobuf", "json-schema"] {
        let out = bench(&[
            "--records",
            "20000",
            "--partitions",
            "2",
            "--format",
            format,
            "--malformed",
            "0.01",
        ]);
        assert_eq!(
            out.matches("check          OK").count(),
            2,
            "{format}: {out}"
        );
    }
}
