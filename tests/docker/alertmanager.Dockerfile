# Alertmanager from Debian's package, laid out as the prom/alertmanager image: the binary at
# /bin/alertmanager, config under /etc/alertmanager and data in /alertmanager, both writable
# by nobody, who runs it; wget for the compose healthcheck.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends prometheus-alertmanager wget \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/prometheus-alertmanager /bin/alertmanager \
    && mkdir -p /alertmanager /etc/alertmanager \
    && chown nobody:nogroup /alertmanager /etc/alertmanager
WORKDIR /alertmanager
USER nobody
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
