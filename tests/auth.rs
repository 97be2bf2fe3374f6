//! Google authentication against a local OAuth token server (axum, in the test): a service-account
//! key (an RSA key made here) is exchanged for a token — the server checks the JWT's RS256 signature
//! with the key's public half and its claims — and that token is the bearer of the insertAll calls
//! the BigQuery fake sees; one token serves many calls; a token within a minute of expiry is
//! replaced; a 401 gets one new token and the request again; the metadata server is a source too.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bqsink::bigquery::auth::{self, Source};
use bqsink::bigquery::RestClient;
use bqsink::service::PipelineHandle;
use bqsink_actors::bigquery::{BigQuery, BqError};
use bqsink_actors::config::BigQueryConfig;
use bqsink_actors::stage::transform::TableRef;
use bqsink_devtools::generator::{Counts, Generator, Mix};
use bqsink_devtools::sink::{Reply, Sink, SinkOptions};
use common::*;
use serde_json::{json, Value};

const TOPIC: &str = "member-events";

/// What the token server saw and how it answers.
struct TokenServerState {
    /// The public key JWTs must be signed with (PKCS#1 DER), and the expected issuer.
    public_key: Vec<u8>,
    client_email: String,
    token_uri: String,
    /// `expires_in` of the tokens handed out.
    expires_in: u64,
    /// Tokens handed out so far (`tok-1`, `tok-2`, …).
    issued: u64,
    /// Requests refused, with why.
    refused: Vec<String>,
}

/// A local OAuth token endpoint (`POST /token`, RFC 7523 JWT bearer grant) and GCE metadata
/// endpoint (`GET /computeMetadata/v1/instance/service-accounts/default/token`).
struct TokenServer {
    url: String,
    state: Arc<Mutex<TokenServerState>>,
    _runtime: tokio::runtime::Runtime,
}

impl TokenServer {
    fn start(public_key: Vec<u8>, client_email: &str, expires_in: u64) -> TokenServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let state = Arc::new(Mutex::new(TokenServerState {
            public_key,
            client_email: client_email.into(),
            token_uri: format!("{url}/token"),
            expires_in,
            issued: 0,
            refused: Vec::new(),
        }));
        let app = Router::new()
            .route("/token", post(token))
            .route(
                "/computeMetadata/v1/instance/service-accounts/default/token",
                get(metadata_token),
            )
            .with_state(Arc::clone(&state));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenServer {
            url,
            state,
            _runtime: runtime,
        }
    }

    fn issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }

    fn refused(&self) -> Vec<String> {
        self.state.lock().unwrap().refused.clone()
    }

    fn set_expires_in(&self, secs: u64) {
        self.state.lock().unwrap().expires_in = secs;
    }
}

fn issue(state: &mut TokenServerState) -> Response {
    state.issued += 1;
    Json(json!({"access_token": format!("tok-{}", state.issued), "expires_in": state.expires_in, "token_type": "Bearer"}))
        .into_response()
}

fn b64(part: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .unwrap_or_default()
}

/// The JWT bearer grant: checks the grant type, the RS256 signature and the claims.
async fn token(State(state): State<Arc<Mutex<TokenServerState>>>, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let param = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let assertion = param("assertion").unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    let refuse = |state: &mut TokenServerState, why: String| {
        state.refused.push(why.clone());
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": why})),
        )
            .into_response()
    };
    if param("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        || parts.len() != 3
    {
        return refuse(&mut state, format!("bad grant: {form:?}"));
    }
    let signed = format!("{}.{}", parts[0], parts[1]);
    let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, state.public_key.clone());
    if key.verify(signed.as_bytes(), &b64(parts[2])).is_err() {
        return refuse(&mut state, "signature does not verify".into());
    }
    let header: Value = serde_json::from_slice(&b64(parts[0])).unwrap_or_default();
    let claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap_or_default();
    if header["alg"] != "RS256"
        || claims["iss"] != state.client_email.as_str()
        || claims["aud"] != state.token_uri.as_str()
        || claims["scope"] != auth::SCOPE
        || claims["exp"].as_i64().unwrap_or(0) <= claims["iat"].as_i64().unwrap_or(0)
    {
        return refuse(&mut state, format!("bad claims: {header} {claims}"));
    }
    issue(&mut state)
}

async fn metadata_token(
    State(state): State<Arc<Mutex<TokenServerState>>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().unwrap();
    if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
        state.refused.push("no Metadata-Flavor header".into());
        return StatusCode::FORBIDDEN.into_response();
    }
    issue(&mut state)
}

/// A fresh RSA key: (PKCS#8 PEM, PKCS#1 DER public key).
fn rsa_key() -> (String, Vec<u8>) {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, pair.public_key().as_ref().to_vec())
}

const EMAIL: &str = "bqsink@test-project.iam.gserviceaccount.com";

/// A token server and a service-account key file pointing at it.
fn service_account(expires_in: u64) -> (TokenServer, tempfile::TempDir, String) {
    let (pem, public) = rsa_key();
    let server = TokenServer::start(public, EMAIL, expires_in);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    let key = json!({
        "type": "service_account", "project_id": "test-project", "private_key_id": "k1",
        "private_key": pem, "client_email": EMAIL, "client_id": "1",
        "auth_uri": "https://accounts.example/auth", "token_uri": format!("{}/token", server.url),
    });
    std::fs::write(&path, key.to_string()).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (server, dir, path)
}

/// Records the Authorization header of every insertAll call; refuses the listed bearers with 401.
fn record_bearers(sink: &Sink, refuse: &'static [&'static str]) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    sink.set_hook(move |req| {
        let bearer = req.authorization.unwrap_or("").to_owned();
        s.lock().unwrap().push(bearer.clone());
        if refuse.contains(&bearer.as_str()) {
            Reply::Fail {
                status: 401,
                reason: "unauthorized".into(),
            }
        } else {
            Reply::Accept
        }
    });
    seen
}

fn sink() -> Sink {
    Sink::start(SinkOptions {
        keep_rows: true,
        id_pointer: Some("/event_id".into()),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn a_service_account_key_is_exchanged_for_the_bearer_of_every_insert_all() {
    let (server, _dir, key_file) = service_account(3600);
    let (_cluster, bootstrap) = cluster(TOPIC, 2);
    let mut counts = Counts::default();
    let events: Vec<_> = Generator::new(Mix {
        duplicates: 0.0,
        malformed: 0.0,
        seed: 41,
    })
    .take(1_000)
    .inspect(|e| counts.add(e.kind))
    .collect();
    produce(&bootstrap, TOPIC, &events);
    let sink = sink();
    let bearers = record_bearers(&sink, &[]);

    let mut config = config(&bootstrap, "g-auth", TOPIC, sink.url());
    config.bigquery.credentials_file = Some(key_file);
    config.batch.max_rows = 50;
    let client = RestClient::new(&config.bigquery).unwrap();
    assert!(
        client.auth_description().contains(EMAIL),
        "{}",
        client.auth_description()
    );
    let pipeline = PipelineHandle::spawn(config, Arc::new(client)).unwrap();
    wait_fully_committed(&bootstrap, "g-auth", TOPIC, 2, Duration::from_secs(60));
    assert_eq!(pipeline.shutdown().unwrap(), 0);

    assert_eq!(sink.total_rows(), counts.unique);
    assert!(server.refused().is_empty(), "{:?}", server.refused());
    let bearers = bearers.lock().unwrap();
    assert!(bearers.len() >= 20, "{} insertAll calls", bearers.len());
    assert!(
        bearers.iter().all(|b| b == "Bearer tok-1"),
        "every insertAll carries the exchanged token: {bearers:?}"
    );
    assert_eq!(server.issued(), 1, "one token serves every call");
}

/// Runs `f` on a runtime of its own (the servers have theirs, which cannot start inside another).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn table() -> TableRef {
    TableRef {
        dataset: "ds".into(),
        table: "t".into(),
    }
}

fn body(i: usize) -> Vec<u8> {
    format!(r#"{{"rows":[{{"json":{{"i":{i}}}}}]}}"#).into_bytes()
}

fn client_config(sink: &Sink) -> BigQueryConfig {
    BigQueryConfig {
        endpoint: sink.url().into(),
        project: "test".into(),
        dataset: "ds".into(),
        request_timeout_ms: 5_000,
        ..Default::default()
    }
}

fn client(sink: &Sink, source: Source) -> RestClient {
    let config = client_config(sink);
    RestClient::with_auth(
        &config,
        auth::token_source(source, Duration::from_secs(5)).unwrap(),
    )
    .unwrap()
}

#[test]
fn tokens_are_cached_and_replaced_a_minute_before_they_expire() {
    let (server, _dir, key_file) = service_account(3600);
    let sink = sink();
    let bearers = record_bearers(&sink, &[]);
    let client = client(&sink, Source::ServiceAccount(key_file.clone().into()));
    block_on(async {
        for i in 0..3 {
            client.insert_all(&table(), body(i)).await.unwrap();
        }
    });
    assert_eq!(server.issued(), 1, "an hour-long token is reused");

    // A token that expires within the minute is replaced before its next use: with 30 s tokens,
    // every call of a client needs a new one.
    server.set_expires_in(30);
    let short = client_for(&sink, key_file);
    block_on(async {
        client.insert_all(&table(), body(3)).await.unwrap(); // still the hour-long tok-1
        for i in 4..7 {
            short.insert_all(&table(), body(i)).await.unwrap();
        }
    });
    assert_eq!(
        server.issued(),
        4,
        "a short-lived token is replaced for every call"
    );
    let bearers = bearers.lock().unwrap();
    assert_eq!(
        *bearers,
        [
            "Bearer tok-1",
            "Bearer tok-1",
            "Bearer tok-1",
            "Bearer tok-1",
            "Bearer tok-2",
            "Bearer tok-3",
            "Bearer tok-4"
        ]
    );
    assert_eq!(sink.total_rows(), 7);
}

#[test]
fn a_refused_token_is_replaced_once_and_the_request_sent_again() {
    let (server, _dir, key_file) = service_account(3600);
    let sink = sink();
    let bearers = record_bearers(&sink, &["Bearer tok-1"]);
    let client = client(&sink, Source::ServiceAccount(key_file.into()));
    block_on(async {
        // The first call and four concurrent ones see tok-1 refused; they share one refresh.
        let first = client.insert_all(&table(), body(0));
        let calls = (1..5).map(|i| client.insert_all(&table(), body(i)));
        let (first, rest) = tokio::join!(first, futures::future::join_all(calls));
        first.unwrap();
        for r in rest {
            r.unwrap();
        }
    });
    assert_eq!(server.issued(), 2, "one new token for every 401");
    assert_eq!(sink.total_rows(), 5);
    let bearers = bearers.lock().unwrap();
    assert_eq!(
        bearers.iter().filter(|b| *b == "Bearer tok-2").count(),
        5,
        "{bearers:?}"
    );

    // A token refused again is an error, after one refresh only.
    let (server, _dir, key_file) = service_account(3600);
    let sink2 = self::sink();
    record_bearers(&sink2, &["Bearer tok-1", "Bearer tok-2", "Bearer tok-3"]);
    let client = client_for(&sink2, key_file);
    let err = block_on(client.insert_all(&table(), body(0))).unwrap_err();
    assert!(matches!(err, BqError::Http { status: 401, .. }), "{err}");
    assert_eq!(server.issued(), 2);
    assert_eq!(sink2.total_rows(), 0);
}

fn client_for(sink: &Sink, key_file: String) -> RestClient {
    client(sink, Source::ServiceAccount(key_file.into()))
}

#[test]
fn a_static_token_is_sent_as_it_is_and_not_refreshed() {
    let sink = sink();
    let bearers = record_bearers(&sink, &["Bearer fixed"]);
    let client = client(&sink, Source::Static("fixed".into()));
    let err = block_on(client.insert_all(&table(), body(0))).unwrap_err();
    assert!(matches!(err, BqError::Http { status: 401, .. }), "{err}");
    assert_eq!(*bearers.lock().unwrap(), ["Bearer fixed", "Bearer fixed"]);
}

#[test]
fn the_metadata_server_supplies_tokens() {
    let (_, public) = rsa_key();
    let server = TokenServer::start(public, EMAIL, 3600);
    let sink = sink();
    let bearers = record_bearers(&sink, &[]);
    let host = server.url.trim_start_matches("http://").to_owned();
    let mut config = client_config(&sink);
    config.auth = bqsink_actors::config::AuthMode::Metadata;
    let source = auth::resolve(&config, |k| {
        (k == "GCE_METADATA_HOST").then(|| host.clone())
    })
    .unwrap();
    assert!(
        matches!(&source, Source::Metadata(url) if url.starts_with(&server.url)),
        "{source:?}"
    );
    let client = client(&sink, source);
    block_on(async {
        for i in 0..3 {
            client.insert_all(&table(), body(i)).await.unwrap();
        }
    });
    assert!(server.refused().is_empty(), "{:?}", server.refused());
    assert_eq!(server.issued(), 1);
    assert_eq!(*bearers.lock().unwrap(), ["Bearer tok-1"; 3]);
}

#[test]
fn a_key_the_token_server_refuses_fails_the_request_without_retry() {
    // The key file names this server, but the server expects another key.
    let (server, _dir, key_file) = service_account(3600);
    let (_, other_public) = rsa_key();
    server.state.lock().unwrap().public_key = other_public;
    let sink = sink();
    let client = client_for(&sink, key_file);
    let err = block_on(client.insert_all(&table(), body(0))).unwrap_err();
    assert!(
        matches!(
            err,
            BqError::Auth {
                retryable: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("invalid_grant") || err.to_string().contains("signature"),
        "{err}"
    );
    assert_eq!(server.refused(), ["signature does not verify"]);
    assert_eq!(
        sink.requests(),
        0,
        "nothing reaches BigQuery without a token"
    );
}
