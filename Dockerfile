# edgetwin gateway image. Build: docker build -t edgetwin-gateway .
# Run:   docker run -p 8080:8080 -e EDGETWIN_MQTT_HOST=mqtt -v $PWD/config:/etc/edgetwin:ro edgetwin-gateway
FROM python:3.12-slim AS build
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/edgetwin
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
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin edgetwin
COPY --from=build /opt/edgetwin /opt/edgetwin
COPY config/gateway.toml /etc/edgetwin/gateway.toml
ENV PATH=/opt/edgetwin/bin:$PATH PYTHONUNBUFFERED=1
USER edgetwin
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["edgetwin", "gateway"]
CMD ["--config", "/etc/edgetwin/gateway.toml"]
