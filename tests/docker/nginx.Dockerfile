# NGINX >= 1.27.3 (upstream `resolve`, which the compose site uses) from Debian forky's
# package, laid out as the official nginx image: sites in /etc/nginx/conf.d/*.conf, logs to
# the container's output, `nginx -g 'daemon off;'`, SIGQUIT to stop gracefully; wget for the
# compose healthcheck. The development release's Release file carries a Valid-Until that a
# mirror snapshot may be past (apt then refuses it as expired): not checked here.
ARG FORKY_IMAGE
FROM ${FORKY_IMAGE}
RUN apt-get -o Acquire::Check-Valid-Until=false update && apt-get install -y --no-install-recommends nginx wget \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
