"""Settings: the plan's defaults, environment parsing, keyword precedence, validation."""

from __future__ import annotations

import pytest

from eventqueue.core.config import SETTINGS, Config, Setting
from eventqueue.core.errors import ConfigError, EventQueueError

NUMERIC = [
    s for s in SETTINGS if isinstance(s.default, int | float) and not isinstance(s.default, bool)
]
BOOLEAN = [s for s in SETTINGS if isinstance(s.default, bool)]


def test_defaults_match_the_plan() -> None:
    config = Config.load(env={})
    assert config.queue_size == 1000
    assert config.dedup_ttl_s == 300
    assert config.batch_window_ms == 100
    assert config.max_batch_size == 10
    assert config.enable_batching is True
    assert config.enable_dedup is True


def test_defaults_of_the_added_settings() -> None:
    config = Config.load(env={})
    assert config.db_path == "events.db"
    assert config.durability == "full"
    assert config.max_attempts >= 1
    assert config.lease_s > 0
    assert config.aging_s > 0


def test_every_setting_has_a_dataclass_field_with_the_same_default() -> None:
    config = Config()
    for setting in SETTINGS:
        assert getattr(config, setting.name) == setting.default, setting.name


def test_the_plans_variable_names_are_kept() -> None:
    names = {s.env for s in SETTINGS}
    assert {
        "EVENT_QUEUE_SIZE",
        "DEDUP_TTL_SECONDS",
        "BATCH_WINDOW_MS",
        "MAX_BATCH_SIZE",
        "ENABLE_BATCHING",
        "ENABLE_DEDUP",
        "EVENT_DB_PATH",
        "EVENT_DURABILITY",
        "EVENT_AGING_SECONDS",
        "EVENT_LEASE_SECONDS",
        "EVENT_MAX_ATTEMPTS",
    } <= names


def test_environment_values_are_parsed() -> None:
    env = {
        "EVENT_QUEUE_SIZE": "50",
        "DEDUP_TTL_SECONDS": "1.5",
        "BATCH_WINDOW_MS": " 250 ",
        "MAX_BATCH_SIZE": "3",
        "ENABLE_BATCHING": "false",
        "ENABLE_DEDUP": "0",
        "EVENT_DB_PATH": "/tmp/q.db",
        "EVENT_DURABILITY": "NORMAL",
        "EVENT_AGING_SECONDS": "7",
        "EVENT_LEASE_SECONDS": "12.5",
        "EVENT_MAX_ATTEMPTS": "9",
    }
    config = Config.load(env=env)
    assert config.queue_size == 50
    assert config.dedup_ttl_s == 1.5
    assert config.batch_window_ms == 250
    assert config.max_batch_size == 3
    assert config.enable_batching is False
    assert config.enable_dedup is False
    assert config.db_path == "/tmp/q.db"
    assert config.durability == "normal"
    assert config.aging_s == 7
    assert config.lease_s == 12.5
    assert config.max_attempts == 9


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " True "])
def test_boolean_environment_values_that_mean_true(text: str) -> None:
    assert Config.load(env={"ENABLE_DEDUP": text}).enable_dedup is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off"])
def test_boolean_environment_values_that_mean_false(text: str) -> None:
    assert Config.load(env={"ENABLE_DEDUP": text}).enable_dedup is False


def test_load_reads_os_environ_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "4")
    assert Config.load().max_batch_size == 4


def test_keyword_beats_environment() -> None:
    env = {"MAX_BATCH_SIZE": "4", "ENABLE_DEDUP": "false", "EVENT_DB_PATH": "env.db"}
    config = Config.load(env=env, max_batch_size=7, enable_dedup=True, db_path="kw.db")
    assert (config.max_batch_size, config.enable_dedup, config.db_path) == (7, True, "kw.db")


def test_keyword_none_falls_back_to_environment() -> None:
    assert Config.load(env={"EVENT_DB_PATH": "env.db"}, db_path=None).db_path == "env.db"


def test_batch_window_in_seconds() -> None:
    assert Config.load(env={}, batch_window_ms=250).batch_window_s == 0.25


def test_the_high_window_comes_from_its_variable_and_is_capped_by_the_batch_window() -> None:
    assert Config.load(env={}).high_batch_window_s == 0.025
    config = Config.load(env={"EVENT_HIGH_BATCH_WINDOW_MS": "40", "BATCH_WINDOW_MS": "250"})
    assert (config.high_batch_window_ms, config.high_batch_window_s) == (40.0, 0.04)
    assert Config.load(env={"BATCH_WINDOW_MS": "10"}).high_batch_window_s == 0.01


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.load(env={}, batch_size=3)


def test_config_error_is_an_eventqueue_error() -> None:
    assert issubclass(ConfigError, EventQueueError)


def test_replace_validates_and_coerces_like_load() -> None:
    config = Config.load(env={})
    assert config.replace(max_batch_size="7", enable_dedup="false").max_batch_size == 7
    with pytest.raises(ConfigError, match="max_batch_size"):
        config.replace(max_batch_size=0)
    with pytest.raises(ConfigError, match="unknown setting"):
        config.replace(bogus=1)


def test_a_fractional_value_for_an_integer_setting_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_batch_size"):
        Config.load(env={}, max_batch_size=2.5)
    with pytest.raises(ConfigError, match="max_batch_size"):
        Config(max_batch_size=2.5)  # type: ignore[arg-type]


def _range_of(setting: Setting) -> str:
    return setting.describe_range()


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
def test_env_value_below_the_range_names_variable_and_range(setting: Setting) -> None:
    assert setting.low is not None
    too_low = setting.low - 1
    with pytest.raises(ConfigError) as raised:
        Config.load(env={setting.env: str(too_low)})
    assert setting.env in str(raised.value)
    assert _range_of(setting) in str(raised.value)


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
def test_env_value_above_the_range_names_variable_and_range(setting: Setting) -> None:
    assert setting.high is not None
    too_high = int(setting.high) + 1
    with pytest.raises(ConfigError) as raised:
        Config.load(env={setting.env: str(too_high)})
    assert setting.env in str(raised.value)
    assert _range_of(setting) in str(raised.value)


@pytest.mark.parametrize("text", ["", "ten", "nan", "inf", "-inf", "1e999", "0x10"])
@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
def test_env_value_that_is_not_a_number_names_variable_and_range(
    setting: Setting, text: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.load(env={setting.env: text})
    assert setting.env in str(raised.value)
    assert _range_of(setting) in str(raised.value)


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
def test_keyword_out_of_range_names_setting_and_range(setting: Setting) -> None:
    assert setting.low is not None
    with pytest.raises(ConfigError) as raised:
        Config.load(env={}, **{setting.name: setting.low - 1})
    assert setting.name in str(raised.value)
    assert _range_of(setting) in str(raised.value)


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
def test_keyword_boolean_for_a_number_is_refused(setting: Setting) -> None:
    with pytest.raises(ConfigError, match=setting.name):
        Config.load(env={}, **{setting.name: True})


@pytest.mark.parametrize("setting", BOOLEAN, ids=lambda s: s.env)
@pytest.mark.parametrize("text", ["maybe", "", "2", "y"])
def test_env_value_that_is_not_a_boolean_names_variable_and_range(
    setting: Setting, text: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.load(env={setting.env: text})
    assert setting.env in str(raised.value)
    assert "true | false" in str(raised.value)


@pytest.mark.parametrize("text", ["fast", "", "off", "FULLY"])
def test_unknown_durability_names_variable_and_choices(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.load(env={"EVENT_DURABILITY": text})
    assert "EVENT_DURABILITY" in str(raised.value)
    assert "full | normal" in str(raised.value)


def test_empty_db_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="EVENT_DB_PATH"):
        Config.load(env={"EVENT_DB_PATH": ""})


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda s: s.env)
def test_range_bounds_themselves_are_accepted(setting: Setting) -> None:
    assert setting.low is not None and setting.high is not None
    for bound in (setting.low, setting.high):
        value = int(bound) if isinstance(setting.default, int) else bound
        assert getattr(Config.load(env={setting.env: str(value)}), setting.name) == value
