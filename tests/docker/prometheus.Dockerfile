# Prometheus from Debian's package, laid out as the prom/prometheus image: the binary at
# /bin/prometheus (Debian's /bin is /usr/bin) as the entrypoint, data in /prometheus, run as nobody; wget for the
# compose healthcheck.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus /etc/prometheus
WORKDIR /prometheus
USER nobody
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
