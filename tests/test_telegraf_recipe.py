"""docs/telegraf.conf agrees with the wire contract.

No Telegraf runs here (no Debian, PyPI or npm package carries it), so this does not show that
Telegraf turns readings into the points the recipe promises: only that the file is TOML, that
it subscribes to the contract's telemetry topics, that every path it reads exists in a real
reading, and that it names every quantity of the vocabulary. The recipe says it is untested.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from edgetwin.agent.contract import Anomaly, Source, Telemetry, Topics, Value
from edgetwin.hardware.quantities import VOCABULARY
from edgetwin.hardware.registry import DRIVERS, reading_quantities

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "telegraf.conf"


def _parser() -> dict[str, Any]:
    config = tomllib.loads(RECIPE.read_text(encoding="utf-8"))
    (consumer,) = config["inputs"]["mqtt_consumer"]
    assert consumer["data_format"] == "json_v2"
    assert consumer["topics"] == [Topics().all_telemetry()]
    (parser,) = consumer["json_v2"]
    return parser  # type: ignore[no-any-return]


def _at(document: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        document = document[key]
    return document


def test_every_path_the_recipe_reads_is_in_a_reading() -> None:
    reading = Telemetry(
        device="pi-1",
        sensor="env",
        ts=1795000000.123,
        seq=42,
        source=Source.EMULATED,
        values={"temperature": Value(value=21.37, unit="°C")},
        anomaly=Anomaly(type="spike", id="f-1", start=1795000000.0),
    ).to_builtins()
    parser = _parser()
    assert isinstance(_at(reading, parser["timestamp_path"]), float)
    tags = {tag.get("rename", tag["path"]): _at(reading, tag["path"]) for tag in parser["tag"]}
    assert tags == {"device": "pi-1", "sensor": "env", "source": "emulated", "anomaly": "spike"}
    assert [tag["path"] for tag in parser["tag"] if tag.get("optional")] == ["anomaly.type"]
    (seq,) = parser["field"]
    assert _at(reading, seq["path"]) == 42
    (values,) = parser["object"]
    assert isinstance(_at(reading, values["path"]), dict)


def test_the_recipe_names_every_quantity_a_driver_can_publish() -> None:
    """The parser flattens values.temperature.unit into temperature_unit: each quantity's unit
    key must be dropped and its value key renamed, or points carry stray string fields."""
    (values,) = _parser()["object"]
    quantities = set(VOCABULARY) | {
        q.name for driver in DRIVERS for q in reading_quantities(driver)
    }
    assert set(values["excluded_keys"]) == {f"{q}_unit" for q in quantities}
    assert values["renames"] == {f"{q}_value": q for q in quantities}
