"""The edge site's NGINX template (http context): :mod:`vkit.edge_conf` fills its
``{{ slots }}``; the comments are kept in every rendered file."""

# ruff: noqa: E501 (the error answers are one line each, as NGINX sends them)

EDGE_TEMPLATE = """\
# vkit: the public edge, NGINX between the clients and the gateway (http context).
#
# The gateway's HTTP server (uvicorn) never times out a request whose head is incomplete,
# and reads a body chunk by chunk in Python: a few hundred idle or trickling connections
# exhaust its descriptors, and a body sent a byte at a time costs seconds of CPU per MiB.
# NGINX holds such clients cheaply, cuts them after the timeouts below, and passes on only
# whole requests. `vkit/edge_conf.py` fills the double-brace slots; docs/edge.md says
# why each value (and the nginx.org page of each directive).

# Connections per client address (counted once a request's head has been read).
limit_conn_zone $binary_remote_addr zone=vkit_edge_conn:10m;
{{ limit_req_zone }}
upstream vkit_gateway {
    # One server: never marked down (max_fails=0 says so), every request is tried on it.
    server {{ gateway }} max_fails=0;
    # Idle connections to the gateway closed before uvicorn's 5 s keep-alive closes them.
    keepalive 16;
    keepalive_timeout 4s;
}

server {
{{ listen }}
    server_name _;
    server_tokens off;
{{ tls }}
    # A request head must arrive within client_header_timeout; a body may pause at most
    # client_body_timeout between two reads, and is never larger than the gateway takes.
    client_header_timeout {{ header_timeout }};
    client_body_timeout {{ body_timeout }};
    client_max_body_size {{ client_max_body_size }};
    client_body_buffer_size 64k;
    # A client that stops reading an answer is dropped after send_timeout (between writes).
    send_timeout {{ send_timeout }};
    keepalive_timeout {{ keepalive_timeout }};
    keepalive_requests 1000;

    limit_conn vkit_edge_conn {{ conns_per_client }};
    limit_conn_status 429;
{{ limit_req }}
    location / {
        proxy_pass http://vkit_gateway;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        # The client's own address, replacing whatever it sent (the edge is the first hop).
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;

        # The whole body is read here first: the gateway only ever sees complete bodies.
        proxy_request_buffering on;
        # Streams (SSE) go on chunk by chunk.
        proxy_buffering off;
        proxy_cache off;

        # A request that reached the gateway is never sent twice.
        proxy_next_upstream off;
        proxy_connect_timeout 5s;
        # The gateway ends every request within its total timeout; wait that long.
        proxy_read_timeout {{ read_timeout }};
        proxy_send_timeout {{ read_timeout }};

        error_page 413 @vkit_too_large;
        error_page 429 @vkit_too_many;
        error_page 502 504 @vkit_no_gateway;
    }

    location @vkit_too_large {
        default_type application/json;
        return 413 '{"error":{"message":"the body is over the {{ client_max_body_size }} limit","type":"invalid_request_error","param":null,"code":413}}\\n';
    }

    location @vkit_too_many {
        default_type application/json;
        return 429 '{"error":{"message":"too many connections or requests from this address","type":"rate_limit_exceeded","param":null,"code":429}}\\n';
    }

    location @vkit_no_gateway {
        default_type application/json;
        return 502 '{"error":{"message":"the gateway is not available","type":"upstream_unavailable","param":null,"code":502}}\\n';
    }
}
{{ health_server }}
"""
