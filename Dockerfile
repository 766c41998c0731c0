# edgetwin gateway image. Build: docker build -t edgetwin-gateway .
# Run:   docker run -p 8080:8080 -e EDGETWIN_MQTT_HOST=mqtt -v $PWD/config:/etc/edgetwin:ro edgetwin-gateway
# Multi-architecture: only python:3.12-slim and portable steps, so
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t edgetwin-gateway .
# builds the same file for PCs, 64-bit Pis and 32-bit Pi OS. The full stack: compose.yaml.
FROM python:3.12-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/edgetwin
# A C compiler for the dependencies without a wheel on some architecture (msgspec publishes
# none for armv7); it stays in this stage, the image below has no compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY agent agent
COPY gateway gateway
COPY hardware hardware
COPY edgetwin edgetwin
RUN uv sync --locked --no-dev --no-editable

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin edgetwin \
    && install -d -o edgetwin -g edgetwin -m 0700 /var/lib/edgetwin
COPY --from=build /opt/edgetwin /opt/edgetwin
COPY config/gateway.toml /etc/edgetwin/gateway.toml
ENV PATH=/opt/edgetwin/bin:$PATH PYTHONUNBUFFERED=1
# /var/lib/edgetwin belongs to the image's user, so a named volume mounted there starts with
# that owner: compose.yaml keeps the broker's generated password files and the API token in it.
VOLUME /var/lib/edgetwin
USER edgetwin
EXPOSE 8080
# /health answers 503 while the broker is out of reach: unhealthy means "no broker" as well as
# "no gateway". The port follows EDGETWIN_SERVER_PORT, else the image config's 8080.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EDGETWIN_SERVER_PORT', '8080') + '/health', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgetwin", "gateway"]
CMD ["--config", "/etc/edgetwin/gateway.toml"]
