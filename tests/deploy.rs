//! The Kubernetes manifests under `deploy/` agree with the code and the configuration they ship:
//! the ConfigMap holds `config/production.toml` verbatim, the probes hit endpoints the admin API
//! serves, and KEDA watches the group and topics that production consumes. (No cluster or Docker
//! engine is needed; the image itself is not built here.)

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `key: value` on the first line that has it.
fn yaml_value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{key}:"))
        })
        .map(|v| v.split('#').next().unwrap_or("").trim().trim_matches('"'))
        .next()
        .unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn the_configmap_holds_production_toml_verbatim() {
    let manifest = read("deploy/configmap.yaml");
    let (_, block) = manifest
        .split_once("  production.toml: |\n")
        .expect("a production.toml block");
    let embedded: String = block
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        embedded,
        read("config/production.toml"),
        "regenerate deploy/configmap.yaml from config/production.toml"
    );
}

#[test]
fn probes_and_keda_match_the_service_and_its_configuration() {
    let deployment = read("deploy/deployment.yaml");
    assert!(deployment.contains("httpGet: {path: /healthz, port: admin}"));
    assert!(deployment.contains("httpGet: {path: /readyz, port: admin}"));
    assert!(deployment.contains("containerPort: 8083"));
    assert_eq!(yaml_value(&deployment, "subPath"), "production.toml");

    let production: toml::Table = toml::from_str(&read("config/production.toml")).unwrap();
    let kafka = production["kafka"].as_table().unwrap();
    let keda = read("deploy/keda-scaledobject.yaml");
    assert_eq!(yaml_value(&keda, "name"), yaml_value(&deployment, "name"));
    let (_, keda) = keda.split_once("triggers:").expect("triggers");
    assert_eq!(yaml_value(keda, "type"), "kafka");
    assert_eq!(
        yaml_value(keda, "consumerGroup"),
        kafka["group_id"].as_str().unwrap()
    );
    let topics = kafka["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 1, "one KEDA trigger per topic");
    assert_eq!(yaml_value(keda, "topic"), topics[0].as_str().unwrap());
}
