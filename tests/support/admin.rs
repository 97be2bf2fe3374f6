//! Helpers for tests of the admin API: a service with its admin API on a free port, an HTTP
//! client, a Prometheus text parser.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use bqsink::service::ServiceHandle;
use bqsink_actors::config::Config;
use bqsink_devtools::generator::{Generator, Mix};
use bqsink_devtools::sink::{Sink, SinkOptions};
use reqwest::blocking::Client;
use serde_json::Value;

use crate::common::config;

pub fn sink() -> Sink {
    Sink::start(SinkOptions {
        keep_rows: false,
        id_pointer: Some("/event_id".into()),
        ..SinkOptions::default()
    })
    .unwrap()
}

/// `n` distinct events whose ids start with `prefix`.
pub fn unique_events(n: usize, prefix: &str, seed: u64) -> Vec<bqsink_devtools::generator::Event> {
    Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed,
    })
    .take(n)
    .map(|mut e| {
        e.payload = String::from_utf8(e.payload)
            .unwrap()
            .replace("evt-", &format!("{prefix}-"))
            .into_bytes();
        e
    })
    .collect()
}

pub fn service_config(bootstrap: &str, group: &str, topic: &str, sink: &Sink) -> Config {
    let mut c = config(bootstrap, group, topic, sink.url());
    c.admin.listen = "127.0.0.1:0".into();
    c.metrics.refresh_interval_ms = 100;
    c
}

pub fn spawn(config: &Config) -> ServiceHandle {
    let (client, _) = bqsink::bigquery::from_config(&config.bigquery).unwrap();
    ServiceHandle::spawn(config.clone(), client).unwrap()
}

pub struct Admin {
    url: String,
    token: Option<String>,
    http: Client,
}

impl Admin {
    pub fn new(svc: &ServiceHandle, token: Option<&str>) -> Self {
        Self {
            url: svc.admin_url(),
            token: token.map(str::to_owned),
            http: Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub fn auth(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.url)))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    pub fn post(&self, path: &str) -> u16 {
        self.auth(self.http.post(format!("{}{path}", self.url)))
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }
}

/// Partition entries of a status document, by partition number.
pub fn partitions(status: &Value) -> HashMap<i64, Value> {
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap(), p.clone()))
        .collect()
}

/// Sum of the samples of `name` whose labels include every pair of `labels` (None if none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: HashMap<&str, &str> = l
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

/// Every partition is assigned and in `state`.
pub fn all_partitions(status: &Value, n: usize, state: &str) -> bool {
    let p = partitions(status);
    p.len() == n && p.values().all(|p| p["state"] == state)
}

/// Every partition's committed offset is its high watermark and its lag 0.
pub fn caught_up(status: &Value, ends: &[(i64, i64)]) -> bool {
    let p = partitions(status);
    p.len() == ends.len()
        && ends.iter().enumerate().all(|(i, (_, high))| {
            let e = &p[&(i as i64)];
            e["committed_offset"] == *high && e["high_watermark"] == *high && e["lag"] == 0
        })
}
