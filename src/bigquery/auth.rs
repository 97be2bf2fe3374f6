//! OAuth bearer tokens for BigQuery (`bigquery.auth`): none, a static token, a service-account key
//! (`bigquery.credentials_file` or `GOOGLE_APPLICATION_CREDENTIALS`: a JWT signed with the key is
//! exchanged at the key's `token_uri`), or the GCE/GKE metadata server (`GCE_METADATA_HOST`
//! overrides its address). The OAuth flows are yup-oauth2's; it caches each token and replaces it a
//! minute before it expires. On top, [`GoogleOAuth`] fetches one token at a time for all concurrent
//! requests, and replaces a token BigQuery refused (401) once, however many requests saw the 401.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bqsink_actors::bigquery::BqError;
use bqsink_actors::config::{AuthMode, BigQueryConfig, Secret};
use futures::future::BoxFuture;
use yup_oauth2::authenticator::{ApplicationDefaultCredentialsTypes, DefaultAuthenticator};
use yup_oauth2::{
    ApplicationDefaultCredentialsAuthenticator, ApplicationDefaultCredentialsFlowOpts,
    ServiceAccountAuthenticator,
};

/// The OAuth scope requested.
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// The metadata server's address, unless `GCE_METADATA_HOST` says otherwise.
pub const METADATA_HOST: &str = "metadata.google.internal";

/// Supplies the bearer token of BigQuery requests.
pub trait TokenSource: Send + Sync + 'static {
    /// The token for the next request; `None`: send no `Authorization` header.
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, BqError>>;

    /// A token to replace `rejected`, which BigQuery answered 401 to. Callers that saw the same
    /// token rejected share one refresh.
    fn refresh<'a>(&'a self, rejected: &'a str) -> BoxFuture<'a, Result<Option<String>, BqError>>;

    /// What the tokens come from, for logs.
    fn describe(&self) -> String;
}

/// No `Authorization` header (emulators, the local sink).
pub struct NoAuth;

impl TokenSource for NoAuth {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, BqError>> {
        Box::pin(async { Ok(None) })
    }
    fn refresh<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<String>, BqError>> {
        Box::pin(async { Ok(None) })
    }
    fn describe(&self) -> String {
        "none".into()
    }
}

/// `bigquery.token`: the same token always (a 401 is not retried with another).
pub struct StaticToken(pub Secret);

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, BqError>> {
        Box::pin(async { Ok(Some(self.0.expose().to_owned())) })
    }
    fn refresh<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<String>, BqError>> {
        self.token()
    }
    fn describe(&self) -> String {
        "static token (bigquery.token)".into()
    }
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the service-account key file {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable service-account key (JSON with private_key, client_email, token_uri)")]
    BadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bigquery.auth = \"service_account\" needs bigquery.credentials_file or GOOGLE_APPLICATION_CREDENTIALS")]
    NoKey,
    #[error("bigquery.auth = \"metadata\" cannot be used while GOOGLE_APPLICATION_CREDENTIALS is set (yup-oauth2 would use the key); unset it or use \"service_account\"")]
    MetadataWithKey,
    #[error("cannot set up the OAuth client (are CA certificates installed?)")]
    Build(#[source] std::io::Error),
}

/// Where tokens come from, as resolved from the configuration and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    None,
    Static(Secret),
    /// A service-account key file.
    ServiceAccount(PathBuf),
    /// The metadata server's token URL.
    Metadata(String),
}

/// Resolves `bigquery.auth` (see [`BigQueryConfig::auth`]) with `env` for environment variables.
pub fn resolve(
    config: &BigQueryConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Source, AuthError> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let token = config
        .token
        .clone()
        .filter(|t| !t.expose().trim().is_empty());
    let file = nonempty(config.credentials_file.clone()).map(PathBuf::from);
    let env_file = || nonempty(env("GOOGLE_APPLICATION_CREDENTIALS")).map(PathBuf::from);
    let metadata = || {
        let host = nonempty(env("GCE_METADATA_HOST")).unwrap_or_else(|| METADATA_HOST.into());
        Source::Metadata(format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        ))
    };
    Ok(match config.auth {
        AuthMode::None => Source::None,
        AuthMode::Token => token.map_or(Source::None, Source::Static),
        AuthMode::ServiceAccount => {
            Source::ServiceAccount(file.or_else(env_file).ok_or(AuthError::NoKey)?)
        }
        AuthMode::Metadata => {
            if env_file().is_some() {
                return Err(AuthError::MetadataWithKey);
            }
            metadata()
        }
        AuthMode::Auto => match (token, file) {
            (Some(t), _) => Source::Static(t),
            (None, Some(f)) => Source::ServiceAccount(f),
            // Emulators and test servers take no token from the environment.
            (None, None) if !config.endpoint.contains("googleapis.com") => Source::None,
            (None, None) => env_file().map_or_else(metadata, Source::ServiceAccount),
        },
    })
}

/// Builds the token source for a resolved [`Source`]. Reads and checks a key file now, so that a
/// bad one is a start-up error.
pub fn token_source(source: Source, timeout: Duration) -> Result<Arc<dyn TokenSource>, AuthError> {
    Ok(match source {
        Source::None => Arc::new(NoAuth),
        Source::Static(t) => Arc::new(StaticToken(t)),
        Source::ServiceAccount(path) => {
            let text = std::fs::read(&path).map_err(|source| AuthError::ReadKey {
                path: path.clone(),
                source,
            })?;
            let key = yup_oauth2::parse_service_account_key(text).map_err(|source| {
                AuthError::BadKey {
                    path: path.clone(),
                    source,
                }
            })?;
            let describe = format!(
                "service account {} (key {}, token endpoint {})",
                key.client_email,
                path.display(),
                key.token_uri
            );
            // Building needs no runtime: the key is in memory and tokens are cached in memory.
            let auth = futures::executor::block_on(
                ServiceAccountAuthenticator::builder(key)
                    .with_timeout(timeout)
                    .build(),
            )
            .map_err(|source| {
                // yup-oauth2 reports the HTTP client (e.g. no CA certificates) and the key alike.
                if source.to_string().contains("hyper client") {
                    AuthError::Build(source)
                } else {
                    AuthError::BadKey { path, source }
                }
            })?;
            Arc::new(GoogleOAuth::new(auth, describe))
        }
        Source::Metadata(url) => {
            let opts = ApplicationDefaultCredentialsFlowOpts {
                metadata_url: Some(url.clone()),
            };
            let builder = match futures::executor::block_on(
                ApplicationDefaultCredentialsAuthenticator::builder(opts),
            ) {
                ApplicationDefaultCredentialsTypes::InstanceMetadata(b) => b,
                ApplicationDefaultCredentialsTypes::ServiceAccount(_) => {
                    return Err(AuthError::MetadataWithKey)
                }
            };
            let auth = futures::executor::block_on(builder.with_timeout(timeout).build())
                .map_err(AuthError::Build)?;
            Arc::new(GoogleOAuth::new(auth, format!("metadata server ({url})")))
        }
    })
}

/// Resolves and builds the token source of `config`, from the process environment.
pub fn from_config(config: &BigQueryConfig) -> Result<Arc<dyn TokenSource>, AuthError> {
    let source = resolve(config, |k| std::env::var(k).ok())?;
    token_source(source, Duration::from_millis(config.request_timeout_ms))
}

/// Tokens from a yup-oauth2 authenticator (service account or metadata server).
pub struct GoogleOAuth {
    auth: DefaultAuthenticator,
    describe: String,
    /// The token last handed out. Held while a token is fetched, so concurrent requests wait for
    /// one fetch instead of each starting their own.
    current: tokio::sync::Mutex<Option<String>>,
}

impl GoogleOAuth {
    pub fn new(auth: DefaultAuthenticator, describe: String) -> Self {
        Self {
            auth,
            describe,
            current: tokio::sync::Mutex::new(None),
        }
    }
}

/// A yup-oauth2 error as a [`BqError`]: connection trouble and garbled answers are worth a retry;
/// an answer that refuses (invalid_grant, …) is not.
fn oauth_error(e: yup_oauth2::Error) -> BqError {
    use yup_oauth2::Error as E;
    let retryable = matches!(
        e,
        E::HttpError(_) | E::HttpClientError(_) | E::LowLevelError(_) | E::JSONError(_)
    );
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    BqError::Auth { message, retryable }
}

fn access_token(t: yup_oauth2::AccessToken) -> Result<String, BqError> {
    t.token().map(str::to_owned).ok_or_else(|| BqError::Auth {
        message: "the token endpoint answered without an access token".into(),
        retryable: false,
    })
}

impl TokenSource for GoogleOAuth {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, BqError>> {
        Box::pin(async move {
            let mut current = self.current.lock().await;
            // yup-oauth2 answers from its cache until a minute before expiry.
            let token = access_token(self.auth.token(&[SCOPE]).await.map_err(oauth_error)?)?;
            *current = Some(token.clone());
            Ok(Some(token))
        })
    }

    fn refresh<'a>(&'a self, rejected: &'a str) -> BoxFuture<'a, Result<Option<String>, BqError>> {
        Box::pin(async move {
            let mut current = self.current.lock().await;
            if let Some(t) = current.as_deref().filter(|t| *t != rejected) {
                // Another request replaced the rejected token already.
                return Ok(Some(t.to_owned()));
            }
            let token = access_token(
                self.auth
                    .force_refreshed_token(&[SCOPE])
                    .await
                    .map_err(oauth_error)?,
            )?;
            tracing::info!(source = %self.describe, "replaced an OAuth token BigQuery refused");
            *current = Some(token.clone());
            Ok(Some(token))
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(f: impl FnOnce(&mut BigQueryConfig)) -> BigQueryConfig {
        let mut c = BigQueryConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn auto_resolves_in_application_default_credentials_order() {
        let none = |_: &str| None;
        let gac =
            |k: &str| (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| "/env/key.json".to_string());
        let meta_host = |k: &str| (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:9".to_string());
        let r = |c: &BigQueryConfig, env: &dyn Fn(&str) -> Option<String>| resolve(c, env).unwrap();

        let c = config(|c| {
            c.token = Some("t".into());
            c.credentials_file = Some("/k.json".into());
        });
        assert_eq!(
            r(&c, &gac),
            Source::Static("t".into()),
            "a static token comes first"
        );
        let c = config(|c| c.credentials_file = Some("/k.json".into()));
        assert_eq!(r(&c, &gac), Source::ServiceAccount("/k.json".into()));
        assert_eq!(
            r(&config(|_| {}), &gac),
            Source::ServiceAccount("/env/key.json".into())
        );
        assert_eq!(
            r(&config(|_| {}), &none),
            Source::Metadata(
                "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token".into()
            )
        );
        assert_eq!(
            r(&config(|_| {}), &meta_host),
            Source::Metadata(
                "http://127.0.0.1:9/computeMetadata/v1/instance/service-accounts/default/token"
                    .into()
            )
        );
        // An emulator endpoint takes nothing from the environment.
        let local = config(|c| c.endpoint = "http://127.0.0.1:9050".into());
        assert_eq!(r(&local, &gac), Source::None);
    }

    #[test]
    fn explicit_modes() {
        let none = |_: &str| None;
        let gac =
            |k: &str| (k == "GOOGLE_APPLICATION_CREDENTIALS").then(|| "/env/key.json".to_string());
        let local = |mode| {
            config(|c| {
                c.endpoint = "http://127.0.0.1:1".into();
                c.auth = mode;
            })
        };
        assert_eq!(
            resolve(&local(AuthMode::ServiceAccount), gac).unwrap(),
            Source::ServiceAccount("/env/key.json".into())
        );
        assert!(matches!(
            resolve(&local(AuthMode::ServiceAccount), none),
            Err(AuthError::NoKey)
        ));
        assert!(matches!(
            resolve(&local(AuthMode::Metadata), none).unwrap(),
            Source::Metadata(_)
        ));
        assert!(matches!(
            resolve(&local(AuthMode::Metadata), gac),
            Err(AuthError::MetadataWithKey)
        ));
        assert_eq!(resolve(&local(AuthMode::None), gac).unwrap(), Source::None);
    }

    #[test]
    fn bad_key_files_are_start_up_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = token_source(
            Source::ServiceAccount(missing.clone()),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("missing.json"), "{err}");
        let bad = dir.path().join("bad.json");
        std::fs::write(
            &bad,
            r#"{"client_email":"a@b","private_key":"nope","token_uri":"http://x"}"#,
        )
        .unwrap();
        let err = token_source(Source::ServiceAccount(bad), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(matches!(err, AuthError::BadKey { .. }), "{err}");
    }
}
