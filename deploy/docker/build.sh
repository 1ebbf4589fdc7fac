#!/bin/sh
# Builds what goes into the container image. The image's build stage
# (deploy/docker/Dockerfile) and CI (.ci/run) run this same script, so every
# CI run exercises the image's build commands; only the cargo profile
# differs (image: release; CI: dev, to stay quick).
#
#   deploy/docker/build.sh [OUT_DIR]
#
# Builds the `switchyard` binary (SWITCHYARD_PROFILE: a cargo profile,
# default release). With OUT_DIR: copies the binary there, writes the
# image's default configuration OUT_DIR/switchyard.toml (the reference
# config/switchyard.toml with the journal in /var/lib/switchyard, the
# image's volume) and checks it with the binary just built.
set -eu
cd "$(dirname "$0")/../.."
profile="${SWITCHYARD_PROFILE:-release}"
cargo build --locked --profile "$profile" -p switchyard
case "$profile" in
  dev | test) dir=debug ;;
  *) dir="$profile" ;;
esac
bin="${CARGO_TARGET_DIR:-target}/$dir/switchyard"
"$bin" --version
[ "$#" -gt 0 ] || exit 0
out="$1"
mkdir -p "$out"
cp "$bin" "$out/switchyard"
chmod 0755 "$out/switchyard"
sed 's|^data_dir = "./data"$|data_dir = "/var/lib/switchyard"|' \
  config/switchyard.toml >"$out/switchyard.toml"
grep -q '^data_dir = "/var/lib/switchyard"$' "$out/switchyard.toml" || {
  echo "build.sh: config/switchyard.toml has no 'data_dir = \"./data\"' line to point at the volume" >&2
  exit 1
}
env -i "$out/switchyard" check-config "$out/switchyard.toml"
