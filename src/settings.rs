//! Configuration loading: `config/default.toml`, then `config/<env>.toml`, then `--config FILE`, then
//! environment variables `BQSINK__SECTION__KEY` (highest). Every layer is checked against the one
//! struct tree in [`bqsink_actors::config`]: unknown keys and bad values are errors naming the key.

use std::path::{Path, PathBuf};

use bqsink_actors::config::Config;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// Every problem figment found, each once (not also as a source: `{:#}` would repeat it).
    #[error("invalid configuration: {}", all_problems(.0))]
    Parse(Box<figment::Error>),
    #[error(transparent)]
    Invalid(#[from] bqsink_actors::config::InvalidConfig),
}

impl From<Box<figment::Error>> for SettingsError {
    fn from(e: Box<figment::Error>) -> Self {
        SettingsError::Parse(e)
    }
}

/// The problems of a figment error (it chains those found together), one per line's worth.
fn all_problems(e: &figment::Error) -> String {
    let problems: Vec<String> = e.clone().into_iter().map(|p| p.to_string()).collect();
    problems.join("; ")
}

/// Where the layers come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory holding `default.toml` and `<env>.toml`.
    pub dir: PathBuf,
    /// `--env NAME`: layer `<dir>/<NAME>.toml` (must exist).
    pub env: Option<String>,
    /// `--config FILE`: one more file on top (must exist).
    pub file: Option<PathBuf>,
}

/// Builds the layered figment (without validating values).
pub fn figment(sources: &Sources) -> Result<Figment, SettingsError> {
    let mut f = Figment::from(Serialized::defaults(Config::default()));
    let default = sources.dir.join("default.toml");
    if default.exists() {
        f = f.merge(Toml::file_exact(&default));
    }
    if let Some(env) = &sources.env {
        let path = sources.dir.join(format!("{env}.toml"));
        if !path.exists() {
            return Err(SettingsError::Missing(path));
        }
        f = f.merge(Toml::file_exact(path));
    }
    if let Some(file) = &sources.file {
        if !file.exists() {
            return Err(SettingsError::Missing(file.clone()));
        }
        f = f.merge(Toml::file_exact(file));
    }
    let env = Env::prefixed("BQSINK__").split("__").filter(|key| {
        !PROPERTY_SECTIONS
            .iter()
            .any(|(_, path)| is_under(key, path))
            && !SECRET_KEYS
                .iter()
                .any(|(_, path)| key.as_str().eq_ignore_ascii_case(path))
    });
    f = f.merge(env);
    // Secrets are taken as the strings they are: typed, `12345` would be a number that fails to
    // load, with the value in the error.
    for (path, value) in secret_env(std::env::vars()) {
        f = f.merge(Serialized::default(path, value));
    }
    for (prefix, path) in PROPERTY_SECTIONS {
        let properties = librdkafka_properties(prefix, std::env::vars());
        if !properties.is_empty() {
            f = f.merge(Serialized::default(path, properties));
        }
    }
    Ok(f)
}

/// Sections whose keys are librdkafka property names, which have dots, and the prefix of their
/// environment variables. A variable names its property with `_` for `.` (librdkafka's names have
/// no `_`): `BQSINK__KAFKA__PROPERTIES__SASL_PASSWORD` sets `kafka.properties."sasl.password"`.
const PROPERTY_SECTIONS: [(&str, &str); 2] = [
    ("BQSINK__KAFKA__PROPERTIES__", "kafka.properties"),
    (
        "BQSINK__ERRORS__DEADLETTERQUEUE__PROPERTIES__",
        "errors.deadletterqueue.properties",
    ),
];

/// Keys that hold secrets, and their environment variables: always strings.
const SECRET_KEYS: [(&str, &str); 5] = [
    ("BQSINK__ADMIN__TOKEN", "admin.token"),
    ("BQSINK__BIGQUERY__TOKEN", "bigquery.token"),
    ("BQSINK__REGISTRY__PASSWORD", "registry.password"),
    ("BQSINK__REGISTRY__TOKEN", "registry.token"),
    (
        "BQSINK__ERRORS__SLACK__WEBHOOK_URL",
        "errors.slack.webhook_url",
    ),
];

/// The secrets set by environment variables, as strings, by key path.
fn secret_env(vars: impl Iterator<Item = (String, String)>) -> Vec<(&'static str, String)> {
    vars.filter_map(|(name, value)| {
        SECRET_KEYS
            .iter()
            .find(|(var, _)| name.eq_ignore_ascii_case(var))
            .map(|(_, path)| (*path, value))
    })
    .collect()
}

/// `key` (an environment key after `BQSINK__`, split at `__`) lies in the section at `path`.
fn is_under(key: &figment::value::UncasedStr, path: &str) -> bool {
    let key = key.as_str().to_ascii_lowercase();
    key.len() > path.len() && key.starts_with(path) && key.as_bytes()[path.len()] == b'.'
}

/// librdkafka properties set by environment variables that start with `prefix`.
fn librdkafka_properties(
    prefix: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> std::collections::BTreeMap<String, String> {
    vars.filter_map(|(name, value)| {
        let property = name.strip_prefix(prefix)?;
        (!property.is_empty()).then(|| (property.to_ascii_lowercase().replace('_', "."), value))
    })
    .collect()
}

/// Loads and validates the configuration.
pub fn load(sources: &Sources) -> Result<Config, SettingsError> {
    let config: Config = figment(sources)?.extract().map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}

/// Parses one TOML text as a complete configuration layer over the defaults (tests, demo).
pub fn from_toml(text: &str) -> Result<Config, SettingsError> {
    let config: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract()
        .map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}

/// The merged configuration as TOML, with secrets masked (for `bqsink validate`).
pub fn to_toml_redacted(config: &Config) -> String {
    // Tokens and the webhook URL are `Secret`s, which serialize as "<redacted>".
    let mut c = config.clone();
    let properties = c
        .kafka
        .properties
        .iter_mut()
        .chain(c.errors.deadletterqueue.properties.iter_mut());
    for (k, v) in properties {
        if is_secret_property(k) {
            *v = "<redacted>".into();
        } else {
            *v = without_userinfo(v);
        }
    }
    for url in [
        &mut c.bigquery.endpoint,
        &mut c.bigquery.storage_endpoint,
        &mut c.telemetry.otlp_endpoint,
    ] {
        *url = without_userinfo(url);
    }
    toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render configuration: {e}"))
}

/// librdkafka properties that hold key material or credentials (`ssl.key.pem`,
/// `sasl.oauthbearer.config`, passwords, secrets, JAAS settings, tokens).
fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "key.pem",
        "oauthbearer.config",
        "token",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `text` with the user information of any URL in it (`https://user:pass@host`) masked.
fn without_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ', ',']).unwrap_or(tail.len());
        match tail[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// The default config directory: `$BQSINK_CONFIG_DIR`, else `./config`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("BQSINK_CONFIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("config").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_config_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn default_toml_mirrors_the_rust_defaults() {
        let text = std::fs::read_to_string(repo_config_dir().join("default.toml")).unwrap();
        let from_file: Config =
            toml::from_str(&text).expect("default.toml parses with every key known");
        assert_eq!(
            from_file,
            Config::default(),
            "config/default.toml and the Rust defaults differ"
        );
        // Every key of the struct tree appears in the file.
        let file: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        for (section, keys) in &defaults {
            let Some(keys) = keys.as_table() else {
                continue;
            };
            for key in keys.keys() {
                let present = file.get(section).and_then(|s| s.get(key)).is_some();
                assert!(present, "config/default.toml lacks {section}.{key}");
            }
        }
    }

    #[test]
    fn environment_files_parse_and_validate() {
        for env in ["local", "production"] {
            let sources = Sources {
                dir: repo_config_dir(),
                env: Some(env.into()),
                file: None,
            };
            let c: Config = figment(&sources)
                .unwrap()
                .extract()
                .unwrap_or_else(|e| panic!("{env}: {e}"));
            assert!(!c.kafka.topics.is_empty(), "{env} sets topics");
        }
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = from_toml("[kafka]\nbrokerz = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokerz"), "{err}");
        let err = from_toml("[batchh]\nmax_rows = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batchh"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        let base = "[kafka]\ntopics=[\"t\"]\n[bigquery]\nproject=\"p\"\ndataset=\"d\"\n";
        let err = from_toml(&format!("{base}[batch]\nmax_rows = 60000\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch.max_rows"), "{err}");
        let err = from_toml(&format!("{base}[errors]\ntolerance = \"some\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tolerance"), "{err}");
        let err = from_toml(&format!("{base}[dedup]\nkey = \"event_id\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("JSON pointer"), "{err}");
        from_toml(base).unwrap();
    }

    #[test]
    fn validate_redacts_key_material_and_credentials_in_urls() {
        let mut c = Config::default();
        for (k, v) in [
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----MIIEkey"),
            ("sasl.oauthbearer.config", "clientSecret=oauthsecret"),
            ("sasl.password", "saslpass"),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "https://tokenuser:tokenpass@idp/token",
            ),
        ] {
            c.kafka.properties.insert(k.into(), v.into());
        }
        c.bigquery.endpoint = "https://bquser:bqpass@bigquery.example/".into();
        c.telemetry.otlp_endpoint = "http://otel:otelpass@collector:4318".into();
        let printed = to_toml_redacted(&c);
        for secret in [
            "MIIEkey",
            "oauthsecret",
            "saslpass",
            "tokenpass",
            "tokenuser",
            "bqpass",
            "otelpass",
        ] {
            assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
        }
        assert!(
            printed.contains("https://<redacted>@bigquery.example/"),
            "{printed}"
        );
        assert_eq!(without_userinfo("http://host:1/a@b"), "http://host:1/a@b");
    }

    #[test]
    fn a_configuration_error_is_printed_once() {
        let err = from_toml("[[bigquery.tables]]\ntable = \"t\"\ntopics = [\"a\"]\ncolour = 1\n")
            .unwrap_err();
        // As `bqsink` prints it: the error and its causes.
        let printed = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(printed.matches("unknown field").count(), 1, "{printed}");
    }

    #[test]
    fn an_admin_api_beyond_loopback_needs_a_token() {
        let base = "[kafka]\ntopics=[\"t\"]\n[bigquery]\nproject=\"p\"\ndataset=\"d\"\n";
        let err = from_toml(&format!("{base}[admin]\nlisten = \"0.0.0.0:8083\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin.token") && err.contains("admin.listen"),
            "{err}"
        );
        from_toml(&format!(
            "{base}[admin]\nlisten = \"0.0.0.0:8083\"\ntoken = \"s3cret\"\n"
        ))
        .unwrap();
        from_toml(&format!("{base}[admin]\nlisten = \"[::1]:8083\"\n")).unwrap();
        from_toml(&format!(
            "{base}[admin]\nenabled = false\nlisten = \"0.0.0.0:8083\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn avro_topics_need_a_registry_and_formats_name_consumed_topics() {
        use bqsink_actors::config::ValueFormat;
        let base = "[kafka]\ntopics=[\"t\", \"u\"]\n[bigquery]\nproject=\"p\"\ndataset=\"d\"\n";
        let err = |extra: &str| {
            from_toml(&format!("{base}{extra}"))
                .unwrap_err()
                .to_string()
        };
        let e = err("[kafka.formats]\nt = \"avro\"\n");
        assert!(e.contains("registry.url") && e.contains("\"t\""), "{e}");
        let e = err("[kafka.formats]\nx = \"avro\"\n[registry]\nurl = \"http://r:8081\"\n");
        assert!(e.contains("kafka.formats") && e.contains("\"x\""), "{e}");
        let e = err("[registry]\nurl = \"r:8081\"\n");
        assert!(e.contains("registry.url"), "{e}");
        let e = err("[kafka.formats]\nt = \"protobuf\"\n");
        assert!(e.contains("protobuf"), "{e}");
        let e = err("[kafka.key_formats]\nu = \"json_schema\"\n");
        assert!(
            e.contains("registry.url") && e.contains("kafka.key_formats"),
            "{e}"
        );
        let e = err("[kafka.key_formats]\nx = \"avro\"\n[registry]\nurl = \"http://r:8081\"\n");
        assert!(
            e.contains("kafka.key_formats") && e.contains("\"x\""),
            "{e}"
        );
        let c = from_toml(&format!(
            "{base}[kafka.formats]\nt = \"avro\"\n[registry]\nurl = \"https://r:8081\"\n\
             username = \"key\"\npassword = \"12345\"\n"
        ))
        .unwrap();
        assert_eq!(c.kafka.format_of("t"), ValueFormat::Avro);
        assert_eq!(c.kafka.format_of("u"), ValueFormat::Json);
        assert!(!to_toml_redacted(&c).contains("12345"));
    }

    #[test]
    fn tables_as_an_array_with_definitions_or_as_the_older_map() {
        use bqsink_actors::config::{FieldMode, FieldType, PartitionType};
        let base = "[kafka]\ntopics=[\"t\"]\n[bigquery]\nproject=\"p\"\ndataset=\"d\"\n";
        let c = from_toml(&format!(
            r#"{base}
[[bigquery.tables]]
topics = ["member-events"]
table = "other.member_events"
table_from = "/event_type"
partition_field = "occurred_at"
partition_type = "HOUR"
clustering = ["member_id"]
schema = [
  {{ name = "member_id", type = "STRING", mode = "REQUIRED" }},
  {{ name = "occurred_at", type = "TIMESTAMP" }},
  {{ name = "attributes", type = "RECORD", fields = [{{ name = "ip", type = "STRING" }}] }},
]
[[bigquery.tables]]
table = "login"
"#
        ))
        .unwrap();
        let t: Vec<_> = c.bigquery.tables.iter().collect();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].topics, ["member-events"]);
        assert_eq!(t[0].table_from.as_deref(), Some("/event_type"));
        assert_eq!(t[0].partition_type, Some(PartitionType::Hour));
        assert_eq!(t[0].schema[0].mode, FieldMode::Required);
        assert_eq!(t[0].schema[1].mode, FieldMode::Nullable);
        assert_eq!(t[0].schema[2].field_type, FieldType::Record);
        assert_eq!(t[0].schema[2].fields[0].name, "ip");
        assert!(t[1].topics.is_empty() && t[1].schema.is_empty());
        // The rendered configuration parses back to the same.
        let again = from_toml(&to_toml_redacted(&c)).unwrap();
        assert_eq!(again, c);

        let legacy = from_toml(&format!(
            "{base}[bigquery.tables]\n\"a\" = \"x\"\n\"b\" = \"ds.y\"\n"
        ))
        .unwrap();
        let mut expected = bqsink_actors::config::Tables::default();
        expected.insert("a".into(), "x".into());
        expected.insert("b".into(), "ds.y".into());
        assert_eq!(legacy.bigquery.tables, expected);

        let bad = |entry: &str| {
            from_toml(&format!("{base}[[bigquery.tables]]\n{entry}\n"))
                .unwrap_err()
                .to_string()
        };
        let err = bad("table = \"t\"\nschemaa = []");
        assert!(err.contains("schemaa"), "{err}");
        let err = bad("table = \"t\"\nschema = [{ name = \"a\", type = \"STRNG\" }]");
        assert!(err.contains("STRNG"), "{err}");
        let err = bad("table = \"t\"\npartition_field = \"a\"\nschema = [{ name = \"a\", type = \"STRING\" }]");
        assert!(
            err.contains("bigquery.tables") && err.contains("TIMESTAMP"),
            "{err}"
        );
        let err = bad("table = \"t\"\nschema = [{ name = \"r\", type = \"RECORD\" }]");
        assert!(err.contains("needs fields"), "{err}");
        let err = bad("table = \"t\"\ntable_from = \"event_type\"");
        assert!(err.contains("JSON pointer"), "{err}");
        let err = bad("table = \"a b\"");
        assert!(err.contains("dataset.table"), "{err}");
        let err = from_toml(&format!(
            "{base}allow_new_fields = true\nignore_unknown_values = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("bigquery.allow_new_fields"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn layers_and_environment_variables_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("default.toml"),
            "[kafka]\nbrokers = \"a:1\"\ngroup_id = \"g0\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("staging.toml"),
            "[kafka]\nbrokers = \"b:1\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"session.timeout.ms\" = \"6000\"\n",
        )
        .unwrap();
        let extra = dir.path().join("extra.toml");
        std::fs::write(&extra, "[batch]\nmax_rows = 7\n").unwrap();
        let sources = Sources {
            dir: dir.path().into(),
            env: Some("staging".into()),
            file: Some(extra),
        };
        figment::Jail::expect_with(|jail| {
            jail.set_env("BQSINK__BATCH__LINGER_MS", "9");
            // librdkafka properties: `_` for `.`, merged with the files' properties.
            jail.set_env("BQSINK__KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret");
            jail.set_env("BQSINK__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "7000");
            jail.set_env(
                "BQSINK__ERRORS__DEADLETTERQUEUE__PROPERTIES__LINGER_MS",
                "3",
            );
            let c: Config = figment(&sources).unwrap().extract().unwrap();
            assert_eq!(c.kafka.brokers, "b:1");
            assert_eq!(c.kafka.group_id, "g0");
            assert_eq!(c.batch.max_rows, 7);
            assert_eq!(c.batch.linger_ms, 9);
            let props = |m: &std::collections::BTreeMap<String, String>| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                props(&c.kafka.properties),
                [
                    ("sasl.password".to_string(), "s3cret".to_string()),
                    ("security.protocol".into(), "SASL_SSL".into()),
                    ("session.timeout.ms".into(), "7000".into()),
                ]
            );
            assert_eq!(
                props(&c.errors.deadletterqueue.properties),
                [("linger.ms".to_string(), "3".to_string())]
            );
            Ok(())
        });
        let missing = Sources {
            dir: dir.path().into(),
            env: Some("nope".into()),
            file: None,
        };
        assert!(matches!(figment(&missing), Err(SettingsError::Missing(_))));
    }
}
