#!/usr/bin/env bash
# Install vkit's systemd units on a GPU host: one vLLM replica per GPU set, NGINX in
# front, the gateway before it. Idempotent: re-running updates units and configs but never
# overwrites secrets (/etc/vkit/vkit.env) or the gateway's settings.
#
#   sudo deploy/systemd/install.sh --profile configs/deployments/llama-3.1-8b-rtx4090.yaml \
#       --gpus 0,1 [--enable]                  # vllm@0, vllm@1: one GPU each
#   sudo deploy/systemd/install.sh --profile configs/deployments/llama-3.1-70b-h200-tp2.yaml \
#       --gpus 0,1,2,3 --tp 2                  # vllm@0-1, vllm@2-3: tensor parallel 2
#   sudo deploy/systemd/install.sh ... --routing aware   # gateway -> replicas direct, no NGINX
#   sudo deploy/systemd/install.sh --deployment deploy/deployments/two-models.yaml
#       # several models (docs/deployment-file.md): vllm@chat-0, vllm@fast-0; routing aware
#   deploy/systemd/install.sh --destdir /tmp/stage ...   # stage files only (no root needed)
#   deploy/systemd/install.sh --dry-run ...              # print what would be done
#
# --tp N: GPUs per replica, consecutive in the --gpus order (default: the profile's
# tensor_parallel, else 1); the fit solver checks the profile on N GPUs before anything is
# written. Prerequisites: vkit (with vLLM for CUDA) in /opt/vkit/venv (or --vkit-bin), nginx,
# Redis (redis-server on Debian, redis or valkey on RHEL), nvidia-modprobe, openssl. Replica i
# listens on 127.0.0.1:(base port + i); NGINX on 127.0.0.1:8000; the gateway on
# 127.0.0.1:8080, its admin listener (/metrics) on 127.0.0.1:9180; the public edge (NGINX,
# TLS) on 443, with /etc/vkit/tls/{cert,key}.pem.
# --routing round_robin (default): the gateway goes through NGINX; aware: the gateway
# routes to the replicas' ports itself (by load and prompt prefix) and no NGINX site is set.
# --deployment FILE: every group's GPUs, tensor parallel and profile come from the file (give
# it on every install, without --profile, --gpus, --tp or --routing).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gpus="0"
tp=""
profile=""
destdir=""
dry_run=0
enable=0
vkit_bin="/opt/vkit/venv/bin/vkit"
base_port=""  # vkit render systemd's default unless given
routing="round_robin"
deployment=""
single_args=()  # the single-model options given (refused with --deployment)

usage() {
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "install.sh: error: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpus) gpus="${2:?--gpus needs a value}"; single_args+=(--gpus); shift 2 ;;
        --tp) tp="${2:?--tp needs a number}"; single_args+=(--tp); shift 2 ;;
        --profile) profile="${2:?--profile needs a file}"; single_args+=(--profile); shift 2 ;;
        --deployment) deployment="${2:?--deployment needs a file}"; shift 2 ;;
        --destdir) destdir="${2:?--destdir needs a directory}"; shift 2 ;;
        --vkit-bin) vkit_bin="${2:?--vkit-bin needs a path}"; shift 2 ;;
        --base-port) base_port="${2:?--base-port needs a number}"; shift 2 ;;
        --routing) routing="${2:?--routing needs round_robin or aware}"; single_args+=(--routing); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --enable) enable=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

[[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus: expected GPU indexes like 0,1"
[[ -z "$base_port" || "$base_port" =~ ^[0-9]+$ ]] || die "--base-port: expected a number"
[[ -z "$tp" || "$tp" =~ ^[1-9][0-9]*$ ]] || die "--tp: expected a number of GPUs per replica"
[[ "$routing" == round_robin || "$routing" == aware ]] || die "--routing: expected round_robin or aware"
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

if [[ -n "$deployment" ]]; then
    [[ ${#single_args[@]} -eq 0 ]] || die "--deployment states every group and routes aware: drop ${single_args[*]}"
    [[ -f "$deployment" ]] || die "--deployment: no such file: $deployment"
    routing="aware"
elif [[ -n "$profile" ]]; then
    [[ -f "$profile" ]] || die "--profile: no such file: $profile"
elif [[ ! -f "$etc/replica.yaml" ]]; then
    die "--profile is needed on the first install (a vkit launch profile, e.g. configs/deployments/*.yaml)"
fi
# vkit groups the GPUs into sets, solves the fit for one set and renders the per-host
# files (replica env files, NGINX site, the gateway's model settings) into a staging
# directory; nothing is installed if that fails (e.g. 3 GPUs with --tp 2).
[[ -x "$vkit_bin" ]] || die "$vkit_bin is not executable: install vkit first (or give --vkit-bin)"
stage="$(mktemp -d "${TMPDIR:-/tmp}/vkit-stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
hf_home="$(sed -n 's/^Environment=HF_HOME=//p' "$here/vllm@.service")"
if [[ -n "$deployment" ]]; then
    render=("$vkit_bin" render systemd --deployment "$deployment" --hf-home "$hf_home" --out "$stage")
else
    render=("$vkit_bin" render systemd --profile "${profile:-$etc/replica.yaml}" --gpus "$gpus"
        --hf-home "$hf_home" --routing "$routing" --out "$stage")
fi
[[ -z "$tp" ]] || render+=(--tp "$tp")
[[ -z "$base_port" ]] || render+=(--base-port "$base_port")
# The gateway's own settings, kept across installs: its stop timeout follows their total.
[[ ! -f "$etc/gateway.env" ]] || render+=(--gateway-env "$etc/gateway.env")
if ! summary="$("${render[@]}" 2>"$stage/render.err")"; then
    reason="$(grep -v '^vkit render: note: ' "$stage/render.err" | tail -n 1)"
    reason="${reason#vkit render: error: }"
    die "${reason% (see --help)}"
fi
grep '^vkit render: note: ' "$stage/render.err" >&2 || true
# gateway-routing.env sets routing and upstreams; gateway.env (kept, read last) would win
# (an earlier install's NGINX upstream line is what round_robin sets anyway).
if [[ "$routing" == aware && -f "$etc/gateway.env" ]] && grep -Eq '^VKIT_GATEWAY_(UPSTREAMS|ROUTING)=' "$etc/gateway.env"; then
    die "$etc/gateway.env sets VKIT_GATEWAY_UPSTREAMS or VKIT_GATEWAY_ROUTING, which would override --routing $routing: remove those lines (gateway-routing.env has them now)"
fi
# The NGINX site goes where the host's nginx.conf includes it: Debian and Ubuntu include
# sites-enabled/*, RHEL-family hosts (and nginx.org's packages) conf.d/*.conf only; a site
# put where nothing includes it is never loaded, though `nginx -t` passes.
site="etc/nginx/sites-available/vkit.conf"  # where vkit render systemd writes it
nginx_conf="$root/etc/nginx/nginx.conf"
nginx_includes() {  # nginx_includes DIR: an include of /etc/nginx/DIR/ (or DIR/) in nginx.conf
    grep -Eq "^[[:space:]]*include[[:space:]]+(/etc/nginx/)?$1/" "$nginx_conf"
}
# Both sites (the internal one over the replicas, the public edge) follow the same choice.
confd_only=0
if [[ -f "$nginx_conf" ]] && ! nginx_includes sites-enabled; then
    nginx_includes conf.d || die "$nginx_conf includes neither sites-enabled/* nor conf.d/*.conf: add 'include /etc/nginx/conf.d/*.conf;' to its http block"
    confd_only=1
fi
site_dest="$site"
site_link="etc/nginx/sites-enabled/vkit.conf"
edge_dest="etc/nginx/sites-available/vkit-edge.conf"
edge_link="etc/nginx/sites-enabled/vkit-edge.conf"
if [[ $confd_only -eq 1 ]]; then
    site_dest="etc/nginx/conf.d/vkit.conf"
    site_link=""
    edge_dest="etc/nginx/conf.d/vkit-edge.conf"
    edge_link=""
fi
instances=()
for env_file in "$stage"/etc/vkit/replica-*.env; do
    name="${env_file##*/replica-}"
    instances+=("vllm@${name%.env}.service")
done

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

# 2. Units, and their drop-ins: each unit's stop timeout (its drain plus a margin).
for unit in vllm@.service vkit-gateway.service; do
    sed "s#/opt/vkit/venv/bin/vkit#${vkit_bin}#g" "$here/$unit" >"${TMPDIR:-/tmp}/vkit-unit.$$"
    install_file "${TMPDIR:-/tmp}/vkit-unit.$$" "$root/etc/systemd/system/$unit" 0644
    rm -f "${TMPDIR:-/tmp}/vkit-unit.$$"
done
for drop_in in "$stage"/etc/systemd/system/*.d/*.conf; do
    install_file "$drop_in" "$root/${drop_in#"$stage"/}" 0644
done

# 3. Replica profile (with --deployment: each group's, replica-GROUP.yaml); each GPU set's
# port, CUDA_VISIBLE_DEVICES and tensor-parallel size; the gateway's model settings (its
# tokenizer in the replicas' Hugging Face cache).
if [[ -n "$profile" ]]; then
    install_file "$profile" "$etc/replica.yaml" 0640
fi
for group_profile in "$stage"/etc/vkit/replica-*.yaml; do
    [[ -e "$group_profile" ]] || continue
    install_file "$group_profile" "$etc/${group_profile##*/}" 0640
done
for env_file in "$stage"/etc/vkit/*.env; do
    install_file "$env_file" "$etc/${env_file##*/}" 0640
done
for old in "$etc"/replica-*.env; do
    [[ -e "$old" && ! -e "$stage/etc/vkit/${old##*/}" ]] || continue
    name="${old##*/replica-}"
    echo "note: $old is from an earlier install: systemctl disable --now vllm@${name%.env}, then remove it"
done

# 4. Secrets and gateway settings: created once, then left alone.
secret="$(new_secret)"
write_if_absent "$etc/vkit.env" 0640 "# Shared by vLLM (its --api-key) and the gateway (its upstream key).
VLLM_API_KEY=$secret
VKIT_GATEWAY_UPSTREAM_API_KEY=$secret
# A Hugging Face token for gated models (Llama needs one).
HF_TOKEN="
# The gateway's listeners, keys file and Redis, as vkit rendered them (gateway.env.default).
write_if_absent "$etc/gateway.env" 0640 "$(cat "$stage/etc/vkit/gateway.env.default")"
# The API keys: root writes (vkit keys add keeps owner, group and mode), the gateway's
# user reads through the vkit group, nobody else. Empty at first: every request is 401
# until a key is added; the gateway re-reads the file, no restart needed.
write_if_absent "$etc/keys.yaml" 0640 "keys: []"
if [[ -z "$destdir" && $dry_run -eq 0 ]]; then
    chgrp vkit "$etc"/*.env "$etc"/replica*.yaml "$etc/keys.yaml"
fi

# 5. NGINX site (one server per GPU set), rendered from the same template as every other
# deployment, where nginx.conf includes it (above); none with --routing aware (the gateway
# reaches the replicas itself).
if [[ -f "$stage/$site" ]]; then
    install_file "$stage/$site" "$root/$site_dest" 0644
    if [[ -n "$site_link" && $dry_run -eq 0 ]]; then
        mkdir -p "$root/etc/nginx/sites-enabled"
        ln -sfn ../sites-available/vkit.conf "$root/$site_link"
    fi
else
    for old in etc/nginx/sites-enabled/vkit.conf etc/nginx/conf.d/vkit.conf; do
        [[ -e "$root/$old" ]] || continue
        echo "note: the NGINX site of an earlier install is unused with --routing aware: remove $root/$old"
    done
fi

# 5b. The public edge: NGINX with TLS on 443 in front of the gateway (vkit-edge.conf).
# Its certificate is the operator's own in $etc/tls (cert.pem, key.pem); with neither
# there, a self-signed pair for this host's name is made once and never replaced.
if [[ ! -e "$etc/tls/cert.pem" && ! -e "$etc/tls/key.pem" ]]; then
    run install -d -m 0700 "$etc/tls"
    host_name="$(hostname -f 2>/dev/null || hostname)"
    run sh -c 'umask 077 && exec openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 -subj "/CN=$1" -addext "subjectAltName=DNS:$1" -keyout "$2/key.pem" -out "$2/cert.pem" 2>/dev/null' tls "$host_name" "$etc/tls"
fi
install_file "$here/nginx/vkit-edge.conf" "$root/$edge_dest" 0644
if [[ -n "$edge_link" && $dry_run -eq 0 ]]; then
    mkdir -p "$root/etc/nginx/sites-enabled"
    ln -sfn ../sites-available/vkit-edge.conf "$root/$edge_link"
fi

# 6. Tell systemd and NGINX (not when staging into --destdir).
if [[ -z "$destdir" ]]; then
    run systemctl daemon-reload
    run nginx -t -q  # the edge site is always there
    run systemctl reload-or-restart nginx
    if [[ $enable -eq 1 ]]; then
        # --no-block: a replica is "activating" until its weights are loaded and vkit launch
        # sends READY=1 (minutes for a large model); watch with journalctl -fu vllm@0.
        run systemctl enable --now --no-block vkit-gateway.service "${instances[@]}"
    fi
fi

printf '%s\n' "$summary"
if [[ -n "$deployment" ]]; then
    echo "vkit: installed the groups of ${deployment}."
else
    echo "vkit: installed for GPUs ${gpus}."
fi
if [[ $enable -eq 0 ]]; then
    echo "next: systemctl enable --now vkit-gateway ${instances[*]%.service}"
fi
echo "tokenizer: the gateway counts prompts with the model's tokenizer from the replicas' cache"
echo "      once their first download brought it (it looks every 30 s; no restart needed)"
echo "keys: sudo $vkit_bin keys add NAME --file /etc/vkit/keys.yaml --rpm 60 (prints the secret once;"
echo "      the file stays root:vkit 0640, and the running gateway picks the key up)"
