# callhub: the hub in a container (docs/DEPLOY.md).
#
#   docker build -t callhub .
#   docker run -p 8080:8080 -v callhub-data:/var/lib/callhub callhub
#
# Two stages: the first builds a virtualenv with the hub and its dependencies (wheels only, no
# compiler in the image); the second copies that virtualenv onto a slim Python and runs it as a
# non-root user. The config (/etc/callhub) and the data directory (/var/lib/callhub: the event
# store, the generated admin key and secrets) are volumes.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY handlers ./handlers
RUN python -m venv /opt/callhub && /opt/callhub/bin/pip install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 callhub \
    && useradd --system --uid 10001 --gid callhub --home-dir /var/lib/callhub --no-create-home callhub \
    && mkdir -p /etc/callhub /var/lib/callhub \
    && chown callhub:callhub /var/lib/callhub
COPY --from=build /opt/callhub /opt/callhub
COPY deploy/callhub.toml /etc/callhub/callhub.toml
ENV PATH=/opt/callhub/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CALLHUB_CONFIG=/etc/callhub/callhub.toml \
    CALLHUB_DATA_DIR=/var/lib/callhub
USER callhub:callhub
WORKDIR /var/lib/callhub
VOLUME ["/etc/callhub", "/var/lib/callhub"]
EXPOSE 8080
# /healthz answers 200 while the process runs (no credentials); Python's own urllib: no curl in the image.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# `callhub serve` closes subscribers (WebSocket 1012), flushes the store and exits 0 on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["callhub"]
CMD ["serve"]
