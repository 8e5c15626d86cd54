#!/bin/sh
# Rendered by `vkit render compose --gpu rtx4090 --gpus 0,1 --model llama-3.1-8b --quant awq --concurrency 16`; edit the renderer (or re-render), not this file.
# Alertmanager reads no environment variables: put ALERTMANAGER_WEBHOOK_URL into the config
# next to this script (placeholder @ALERTMANAGER_WEBHOOK_URL@), write it where the command
# line's --config.file= says, then run that command line (Alertmanager's).
set -eu
url=${ALERTMANAGER_WEBHOOK_URL:-}
case $url in
    http://?*|https://?*) ;;
    *) echo "start.sh: ALERTMANAGER_WEBHOOK_URL is not an http(s) URL" >&2; exit 64 ;;
esac
config=
for arg in "$@"; do
    case $arg in --config.file=*) config=${arg#--config.file=} ;; esac
done
if [ -z "$config" ]; then
    echo "start.sh: the command line has no --config.file=" >&2
    exit 64
fi
escaped=$(printf '%s\n' "$url" | sed -e "s/'/''/g" -e 's/[\\&|]/\\&/g')
sed "s|@ALERTMANAGER_WEBHOOK_URL@|$escaped|" "$(dirname "$0")/alertmanager.yml" >"$config.tmp"
mv "$config.tmp" "$config"
exec "$@"
