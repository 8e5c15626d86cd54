#!/bin/sh
# As the official redis image's entrypoint: a `redis-server` started without a config file
# listens on every interface with protected mode off.
set -eu
if [ "${1:-}" = "redis-server" ]; then
    case "${2:-}" in
        *.conf) ;;
        *) shift; set -- redis-server --protected-mode no "$@" ;;
    esac
fi
exec "$@"
