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

/// The kubelet refuses `runAsNonRoot` with a user name it cannot check: the image's user is a
/// number, the one the Deployment runs as.
#[test]
fn the_image_runs_as_the_numeric_user_the_deployment_names() {
    let dockerfile = read("Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line")
        .trim();
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    assert!(uid.parse::<u32>().is_ok(), "USER {user} is not numeric");
    let deployment = read("deploy/deployment.yaml");
    assert_eq!(yaml_value(&deployment, "runAsUser"), uid);
    assert_eq!(yaml_value(&deployment, "runAsGroup"), gid);
    assert_eq!(yaml_value(&deployment, "runAsNonRoot"), "true");
    assert_eq!(
        yaml_value(&deployment, "automountServiceAccountToken"),
        "false"
    );
}

/// The admin API listens beyond loopback in the image, so its token is required (bqsink refuses
/// to start without it), and the image tag is this tree's release.
#[test]
fn the_admin_token_is_required_and_the_image_tag_is_the_release() {
    let deployment = read("deploy/deployment.yaml");
    let token = deployment
        .lines()
        .skip_while(|l| !l.contains("BQSINK__ADMIN__TOKEN"))
        .find(|l| l.contains("secretKeyRef"))
        .expect("the admin token from a secret");
    assert!(!token.contains("optional"), "{token}");
    let kustomization = read("deploy/kustomization.yaml");
    let cargo: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let version = cargo["workspace"]["package"]["version"]
        .as_str()
        .or_else(|| cargo["package"]["version"].as_str())
        .unwrap();
    assert_eq!(yaml_value(&kustomization, "newTag"), version);
    for file in ["poddisruptionbudget.yaml", "networkpolicy.yaml"] {
        assert!(kustomization.contains(&format!("  - {file}")), "{file}");
        read(&format!("deploy/{file}"));
    }
}

/// KEDA reads the brokers the pods read (never a hard-coded address) and authenticates as they do.
#[test]
fn keda_reads_the_pods_brokers_and_authenticates() {
    let keda = read("deploy/keda-scaledobject.yaml");
    assert!(!keda.contains("bootstrapServers:"), "no hard-coded brokers");
    let env = yaml_value(&keda, "bootstrapServersFromEnv");
    assert!(read("deploy/deployment.yaml").contains(&format!("name: {env}")));
    let (_, auth_ref) = keda
        .split_once("authenticationRef:")
        .expect("an authenticationRef");
    let name = yaml_value(auth_ref, "name");
    let (_, trigger_auth) = keda.split_once("kind: TriggerAuthentication").unwrap();
    assert_eq!(yaml_value(trigger_auth, "name"), name);
}
