# A stand-in for python:3.11-slim built from Debian's packages: CPython 3.11 with pip in a venv
# at /usr/local (so `python`, `python3` and `pip` are on PATH as in the official image), and
# pip trusting the CA bundle the build was given (docs/docker-offline.md#a-stand-in-for-python-slim).
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /usr/local
COPY ca-certificates.crt /usr/local/share/pip-ca.crt
ENV PIP_CERT=/usr/local/share/pip-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
CMD ["python3"]
