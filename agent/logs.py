"""JSON logs, one object a line, for journald and log shippers alike."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from edgetwin.agent.config import ObservabilitySettings

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service_name,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_from(settings: ObservabilitySettings, source: str = "configuration") -> None:
    """Logging as `settings` say; ConfigError (naming `source`, the file that holds them, and
    the key) for a `log_config` file that is not a dictConfig TOML file."""
    try:
        configure_logging(
            settings.service_name, settings.log_level, config_file=settings.log_config
        )
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        from edgetwin.agent.config import ConfigError

        raise ConfigError(
            f"{source}: key 'observability.log_config': {settings.log_config}: "
            f"not a logging configuration: {exc}"
        ) from exc


def configure_logging(
    service_name: str,
    level: str = "INFO",
    stream: TextIO | None = None,
    config_file: Path | None = None,
) -> None:
    """JSON lines on stderr, or whatever a dictConfig-style TOML file says.

    In such a file, a formatter `{"()": "agent.logs.JsonFormatter", "service_name": ...}` gives
    the same JSON lines.
    """
    if config_file is not None:
        with config_file.open("rb") as handle:
            logging.config.dictConfig(tomllib.load(handle))
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service_name))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
