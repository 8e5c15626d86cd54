#!/usr/bin/env bash
# Install vkit's systemd units on a GPU host: one vLLM replica per GPU, NGINX in front,
# the gateway before it. Idempotent: re-running updates units and configs but never
# overwrites secrets (/etc/vkit/vkit.env) or the gateway's settings.
#
#   sudo deploy/systemd/install.sh --profile configs/deployments/llama-3.1-8b-rtx4090.yaml \
#       --gpus 0,1 [--enable]
#   deploy/systemd/install.sh --destdir /tmp/stage ...   # stage files only (no root needed)
#   deploy/systemd/install.sh --dry-run ...              # print what would be done
#
# Prerequisites: vkit (with vLLM for CUDA) in /opt/vkit/venv (or --vkit-bin), nginx,
# redis-server. Replica i listens on 127.0.0.1:(base port + i); NGINX on 127.0.0.1:8000;
# the gateway on 0.0.0.0:8080, its admin listener (/metrics) on 127.0.0.1:9180.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gpus="0"
profile=""
destdir=""
dry_run=0
enable=0
vkit_bin="/opt/vkit/venv/bin/vkit"
base_port=8001
nginx_listen="127.0.0.1:8000"

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "install.sh: error: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpus) gpus="${2:?--gpus needs a value}"; shift 2 ;;
        --profile) profile="${2:?--profile needs a file}"; shift 2 ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --vkit-bin) vkit_bin="${2:?--vkit-bin needs a path}"; shift 2 ;;
        --base-port) base_port="${2:?--base-port needs a number}"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --enable) enable=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus: expected GPU indexes like 0,1"
[[ "$base_port" =~ ^[0-9]+$ ]] || die "--base-port: expected a number"
IFS=, read -r -a gpu_ids <<<"$gpus"
root="${destdir%/}"
etc="$root/etc/vkit"

run() {
    if [[ $dry_run -eq 1 ]]; then
        echo "+ $*"
    else
        "$@"
    fi
}

# install_file SRC DEST MODE: copy only when the content changed.
install_file() {
    if [[ -f "$2" ]] && cmp -s "$1" "$2"; then
        return 0
    fi
    run install -D -m "$3" "$1" "$2"
}

# write_if_absent DEST MODE TEXT: never overwrite (secrets, local settings).
write_if_absent() {
    if [[ -e "$1" ]]; then
        echo "kept $1"
        return 0
    fi
    if [[ $dry_run -eq 1 ]]; then
        echo "+ write $1"
        return 0
    fi
    install -D -m "$2" /dev/null "$1"
    printf '%s\n' "$3" >"$1"
}

new_secret() {
    head -c 32 /dev/urandom | base64 | tr -d '/+=\n' | head -c 40
}

if [[ -n "$profile" ]]; then
    [[ -f "$profile" ]] || die "--profile: no such file: $profile"
elif [[ ! -f "$etc/replica.yaml" ]]; then
    die "--profile is needed on the first install (a vkit launch profile, e.g. configs/deployments/*.yaml)"
fi
if [[ ! -x "$vkit_bin" ]]; then
    [[ $dry_run -eq 1 ]] || die "$vkit_bin is not executable: install vkit first (or give --vkit-bin)"
fi

# 1. The service user and its directories.
if [[ -z "$destdir" ]] && ! id -u vkit >/dev/null 2>&1; then
    run useradd --system --home-dir /var/lib/vkit --shell /usr/sbin/nologin vkit
fi
for dir in "$etc" "$root/var/lib/vkit" "$root/var/cache/vkit"; do
    run install -d -m 0750 "$dir"
done
if [[ -z "$destdir" ]]; then
    run chown vkit:vkit "$root/var/lib/vkit" "$root/var/cache/vkit"
    run chown root:vkit "$etc"
fi

# 2. Units.
for unit in vllm@.service vkit-gateway.service; do
    sed "s#/opt/vkit/venv/bin/vkit#${vkit_bin}#g" "$here/$unit" >"${TMPDIR:-/tmp}/vkit-unit.$$"
    install_file "${TMPDIR:-/tmp}/vkit-unit.$$" "$root/etc/systemd/system/$unit" 0644
    rm -f "${TMPDIR:-/tmp}/vkit-unit.$$"
done

# 3. Replica profile and per-GPU ports.
if [[ -n "$profile" ]]; then
    install_file "$profile" "$etc/replica.yaml" 0640
fi
upstreams=()
for i in "${!gpu_ids[@]}"; do
    port=$((base_port + i))
    upstreams+=(--upstream "127.0.0.1:$port")
    printf 'VKIT_REPLICA_PORT=%s\n' "$port" >"${TMPDIR:-/tmp}/vkit-env.$$"
    install_file "${TMPDIR:-/tmp}/vkit-env.$$" "$etc/replica-${gpu_ids[$i]}.env" 0640
    rm -f "${TMPDIR:-/tmp}/vkit-env.$$"
done

# 4. Secrets and gateway settings: created once, then left alone.
secret="$(new_secret)"
write_if_absent "$etc/vkit.env" 0640 "# Shared by vLLM (its --api-key) and the gateway (its upstream key).
VLLM_API_KEY=$secret
VKIT_GATEWAY_UPSTREAM_API_KEY=$secret
# A Hugging Face token for gated models (Llama needs one).
HF_TOKEN="
write_if_absent "$etc/gateway.env" 0640 "VKIT_GATEWAY_HOST=0.0.0.0
VKIT_GATEWAY_PORT=8080
# The admin listener (/metrics for Prometheus, /readyz details, /openapi.json): loopback only.
VKIT_GATEWAY_ADMIN_HOST=127.0.0.1
VKIT_GATEWAY_ADMIN_PORT=9180
VKIT_GATEWAY_UPSTREAMS=[\"http://$nginx_listen\"]
VKIT_GATEWAY_KEYS_FILE=/etc/vkit/keys.yaml
VKIT_GATEWAY_REDIS_URL=redis://127.0.0.1:6379/0"
# The API keys: root writes (vkit keys add keeps owner, group and mode), the gateway's
# user reads through the vkit group, nobody else. Empty at first: every request is 401
# until a key is added; the gateway re-reads the file, no restart needed.
write_if_absent "$etc/keys.yaml" 0640 "keys: []"
if [[ -z "$destdir" && $dry_run -eq 0 ]]; then
    chgrp vkit "$etc"/*.env "$etc/replica.yaml" "$etc/keys.yaml"
fi

# 5. NGINX site, rendered from the same template as every other deployment.
site="$root/etc/nginx/sites-available/vkit.conf"
run "$vkit_bin" render nginx --site "${upstreams[@]}" --listen "$nginx_listen" --out "$site"
if [[ $dry_run -eq 0 ]]; then
    mkdir -p "$root/etc/nginx/sites-enabled"
    ln -sfn ../sites-available/vkit.conf "$root/etc/nginx/sites-enabled/vkit.conf"
fi

# 6. Tell systemd and NGINX (not when staging into --destdir).
if [[ -z "$destdir" ]]; then
    run nginx -t -q
    run systemctl daemon-reload
    run systemctl reload-or-restart nginx
    if [[ $enable -eq 1 ]]; then
        units=(vkit-gateway.service)
        for id in "${gpu_ids[@]}"; do units+=("vllm@$id.service"); done
        # --no-block: a replica is "activating" until its weights are loaded and vkit launch
        # sends READY=1 (minutes for a large model); watch with journalctl -fu vllm@0.
        run systemctl enable --now --no-block "${units[@]}"
    fi
fi

echo "vkit: installed for GPUs ${gpus}."
if [[ $enable -eq 0 ]]; then
    echo "next: systemctl enable --now vkit-gateway $(printf 'vllm@%s ' "${gpu_ids[@]}")"
fi
echo "keys: sudo $vkit_bin keys add NAME --file /etc/vkit/keys.yaml --rpm 60 (prints the secret once;"
echo "      the file stays root:vkit 0640, and the running gateway picks the key up)"
