from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tailor.config import ConfigError, load_settings
from tests.conftest import REPO


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def minimal() -> dict:
    return {
        "project": "acme",
        "sources": {
            name: {"path": f"data/{name}/*.csv"} for name in ("users", "consents", "items", "interactions")
        },
        "publish": {"target": "file://out", "published_user_id": "external"},
    }


def test_demo_config_loads_and_resolves_paths_against_its_folder() -> None:
    settings = load_settings(REPO / "config" / "demo.yaml")
    assert settings.publish.target == "s3://tailor/demo"
    assert settings.resolve(settings.warehouse.path) == (REPO / "var/demo/warehouse/tailor.duckdb").resolve()
    assert {c.campaign_id for c in settings.campaigns} == {"weekly_digest", "app_nudge"}
    assert len(settings.config_sha256) == 64


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    data = minimal() | {"propensity": {"horizon_dayz": 7}}
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, data))
    assert "tailor.yaml" in str(error.value)
    assert "propensity.horizon_dayz" in str(error.value)
    assert "unknown key" in str(error.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"recommendations": {"max_per_categroy": 3}},
            "key 'recommendations.max_per_categroy': unknown key (did you mean 'max_per_category'?)",
        ),
        ({"recomendations": {"k": 5}}, "key 'recomendations': unknown key (did you mean 'recommendations'?)"),
        (
            {"segments": {"rfm_rules": [{"name": "lapsed", "max_days_since_purchse": 90}]}},
            "key 'segments.rfm_rules.0.max_days_since_purchse': unknown key "
            "(did you mean 'max_days_since_purchase'?)",
        ),
    ],
)
def test_a_misspelled_key_gets_the_closest_valid_key_at_its_place(
    tmp_path: Path, extra: dict, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, minimal() | extra))
    assert str(error.value).endswith(expected)


def test_a_key_far_from_every_valid_one_gets_no_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, minimal() | {"recommendations": {"colour_scheme": "dark"}}))
    assert str(error.value).endswith("key 'recommendations.colour_scheme': unknown key")


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    data = minimal() | {"recommendations": {"k": "ten"}}
    with pytest.raises(ConfigError, match=r"recommendations\.k"):
        load_settings(write(tmp_path, data))


def test_missing_required_value_and_source(tmp_path: Path) -> None:
    data = minimal()
    del data["publish"]
    del data["sources"]["items"]
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, data))
    message = str(error.value)
    assert "'publish': required value missing" in message
    assert "items" in message


def test_unknown_canonical_column_in_mapping(tmp_path: Path) -> None:
    data = minimal()
    data["sources"]["users"]["columns"] = {"shoe_size": "shoe"}
    with pytest.raises(ConfigError, match="shoe_size"):
        load_settings(write(tmp_path, data))


def test_pseudonymous_ids_need_the_key_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    data = minimal()
    data["publish"]["published_user_id"] = "pseudonymous"
    monkeypatch.delenv("TAILOR_PSEUDONYM_KEY", raising=False)
    with pytest.raises(ConfigError, match="TAILOR_PSEUDONYM_KEY"):
        load_settings(write(tmp_path, data))
    monkeypatch.setenv("TAILOR_PSEUDONYM_KEY", "k")
    assert load_settings(write(tmp_path, data)).pseudonym_key() == b"k"


def test_bad_timezone_and_target_scheme(tmp_path: Path) -> None:
    data = minimal() | {"timezone": "Mars/Olympus"}
    data["publish"]["target"] = "ftp://somewhere"
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, data))
    assert "timezone" in str(error.value) and "publish.target" in str(error.value)


def test_campaign_variants_must_be_unique(tmp_path: Path) -> None:
    data = minimal() | {
        "campaigns": [
            {
                "campaign_id": "c",
                "channel": "email",
                "variants": [{"variant_id": "a", "subject": "x"}, {"variant_id": "a", "subject": "y"}],
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"campaigns\.0"):
        load_settings(write(tmp_path, data))


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def campaign_file(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def email_campaign(**overrides) -> dict:
    return {
        "campaign_id": "c1",
        "channel": "email",
        "variants": [{"variant_id": "a", "subject": "Hello from {{ user.country }}"}],
    } | overrides


def test_campaign_files_beside_the_config_are_loaded_with_their_source(tmp_path: Path) -> None:
    path = campaign_file(tmp_path / "campaigns", "c1", email_campaign())
    settings = load_settings(write(tmp_path, minimal()))
    assert [c.campaign_id for c in settings.campaigns] == ["c1"]
    assert settings.campaigns[0].source_file == str(path)
    assert settings.campaigns[0].required_consents == ["marketing_email"]


def test_demo_campaigns_come_from_files_with_policies() -> None:
    settings = load_settings(REPO / "config" / "demo.yaml")
    policies = {c.campaign_id: c.allocation.policy for c in settings.campaigns}
    assert policies == {"weekly_digest": "personalized", "app_nudge": "bandit"}
    assert all(c.source_file.endswith(f"campaigns/{c.campaign_id}.yaml") for c in settings.campaigns)


def test_a_template_with_an_unknown_field_fails_at_load_naming_campaign_variant_and_field(
    tmp_path: Path,
) -> None:
    bad = email_campaign(
        variants=[
            {"variant_id": "ok", "subject": "Hi"},
            {"variant_id": "v2", "subject": "Hi", "body": "{% for i in items %}{{ i.colour }}{% endfor %}"},
        ]
    )
    path = campaign_file(tmp_path / "campaigns", "c1", bad)
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, minimal()))
    message = str(error.value)
    assert str(path) in message and "campaign c1, variant v2, body" in message and "item.colour" in message


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ({"subject": "{{ user.email }}"}, "user.email"),
        ({"subject": "{{ first_name }}"}, "first_name"),
        ({"subject": "{{ items[0].title }}"}, "without recommended items"),
        ({"subject": "{{ user.country "}, "syntax error"),
        ({"subject": "x" * 151}, "allows 150"),
    ],
)
def test_template_problems_are_caught_before_any_data(tmp_path: Path, variant: dict, expected: str) -> None:
    campaign_file(tmp_path / "campaigns", "c1", email_campaign(variants=[{"variant_id": "a", **variant}]))
    with pytest.raises(ConfigError, match="variant a, subject") as error:
        load_settings(write(tmp_path, minimal()))
    assert expected in str(error.value)


def test_campaign_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = campaign_file(tmp_path / "campaigns", "c1", email_campaign(allocation={"policy": "greedy"}))
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, minimal()))
    assert str(path) in str(error.value) and "allocation.policy" in str(error.value)


def test_a_misspelled_key_in_a_campaign_files_variant_gets_a_suggestion(tmp_path: Path) -> None:
    variants = [{"variant_id": "a", "subject": "Hi"}, {"variant_id": "b", "subjet": "Hello"}]
    path = campaign_file(tmp_path / "campaigns", "c1", email_campaign(variants=variants))
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, minimal()))
    assert str(error.value) == f"{path}: key 'variants.1.subjet': unknown key (did you mean 'subject'?)"


def test_audience_segments_must_exist_and_ids_be_unique(tmp_path: Path) -> None:
    folder = tmp_path / "campaigns"
    campaign_file(folder, "c1", email_campaign(audience={"segments": ["vip"]}))
    with pytest.raises(ConfigError, match="'vip' is not a segment"):
        load_settings(write(tmp_path, minimal()))
    campaign_file(folder, "c1", email_campaign())
    campaign_file(folder, "c2", email_campaign())
    with pytest.raises(ConfigError, match="campaign_id 'c1' is also used"):
        load_settings(write(tmp_path, minimal()))


def test_unknown_published_dataset_is_named(tmp_path: Path) -> None:
    data = minimal()
    data["publish"]["csv_datasets"] = ["recommendations", "campaign_assignments"]
    with pytest.raises(ConfigError, match=r"publish\.csv_datasets.*campaign_assignments"):
        load_settings(write(tmp_path, data))


def test_a_campaign_needs_its_channels_consent_besides_any_audience_purpose(tmp_path: Path) -> None:
    campaign_file(
        tmp_path / "campaigns",
        "c1",
        email_campaign(channel="push", audience={"consent_purpose": "profiling"}),
    )
    campaign_file(
        tmp_path / "campaigns",
        "c2",
        email_campaign(campaign_id="c2", audience={"consent_purpose": "marketing_email"}),
    )
    settings = load_settings(write(tmp_path, minimal()))
    consents = {c.campaign_id: c.required_consents for c in settings.campaigns}
    assert consents == {"c1": ["marketing_push", "profiling"], "c2": ["marketing_email"]}


def test_ids_may_not_hold_the_model_name_separator(tmp_path: Path) -> None:
    campaign_file(tmp_path / "campaigns", "c1", email_campaign(campaign_id="a__b"))
    with pytest.raises(ConfigError, match="must not contain '__'"):
        load_settings(write(tmp_path, minimal()))


def test_channel_limits_merge_over_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, minimal() | {"channel_limits": {"email": {"subject": 60}}}))
    assert settings.channel_limits["email"]["subject"] == 60
    assert (
        settings.channel_limits["email"]["headline"] == 200
        and settings.channel_limits["push"]["subject"] == 65
    )
    with pytest.raises(ConfigError, match="channel_limits"):
        load_settings(write(tmp_path, minimal() | {"channel_limits": {"push": {"title": 10}}}))


def test_recommendation_exclusions_are_normalized_and_checked(tmp_path: Path) -> None:
    exclude = {
        "categories": [" Fuel ", "GIFT CARDS"],
        "item_id_patterns": ["GIFT\\_%"],
        "max_price_cents": 900,
    }
    settings = load_settings(write(tmp_path, minimal() | {"recommendations": {"exclude": exclude}}))
    rules = settings.recommendations.exclude
    assert rules.categories == ["fuel", "gift cards"] and rules.exclude_unavailable is True
    assert [name for name, _ in rules.rules()] == [
        "categories", "item_id_patterns", "max_price_cents", "exclude_unavailable"
    ]  # fmt: skip
    assert rules.sql_params()["exclude_min_price_cents"] is None
    for bad, key in (
        ({"min_price_cents": 500, "max_price_cents": 100}, "max_price_cents must not be below"),
        ({"item_id_patterns": ["GIFT\\"]}, "lone backslash"),
        ({"departments": ["  "]}, "empty name"),
        ({"brands": ["acme"]}, "recommendations.exclude.brands': unknown key"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_settings(write(tmp_path, minimal() | {"recommendations": {"exclude": bad}}))
    assert load_settings(write(tmp_path, minimal())).recommendations.exclude.rules() == [
        ("exclude_unavailable", "marked unavailable")
    ]


@pytest.mark.parametrize(
    "target", ["file:///", "file:///etc", "file:///usr/local/out", "file:///tmp/../etc/x", "file:///bin"]
)
def test_a_target_in_a_system_folder_is_refused(tmp_path: Path, target: str) -> None:
    system = minimal() | {"publish": {"target": target, "published_user_id": "external"}}
    with pytest.raises(ConfigError, match=r"key 'publish\.target': .*; publish to a folder of your own"):
        load_settings(write(tmp_path, system))
    with pytest.raises(ConfigError, match=r"publish\.target"):  # the same from the command line
        load_settings(write(tmp_path, minimal()), {"publish.target": target})
    # relative targets and those under the config's folder load, '..' included (the config is the owner's)
    relative = minimal() | {"publish": {"target": "file://../published", "published_user_id": "external"}}
    assert load_settings(write(tmp_path, relative)).publish.target == "file://../published"


def test_a_relative_command_line_target_may_not_climb(tmp_path: Path, capsys) -> None:
    from tailor.cli import main

    config = write(tmp_path, minimal())
    assert main(["run", "--config", str(config), "--target", "file://../../..", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "file://../../.." in error and "'..'" in error and error.count("\n") == 1


def _with_metrics(tmp_path: Path, metrics: dict) -> Path:
    return write(tmp_path, minimal() | {"experiments": {"metrics": metrics}})


def test_a_company_metric_joins_the_catalogue_after_the_built_ins(tmp_path: Path) -> None:
    (tmp_path / "orders.sql").write_text(
        "select user_id, sent_at, 1 as value from staging.stg_campaign_exposures "
        "where campaign_id = $campaign_id and sent_at < $cutoff  -- $unbound in a comment is fine\n"
    )
    settings = load_settings(
        _with_metrics(tmp_path, {
            "carts": {"event_type": "add_to_cart", "window_days": 3, "aggregate": "count",
                      "covariate": "ln(1 + events_before) - 0.5 * clicks_before"},
            "orders": {"sql": "orders.sql", "kind": "binary", "higher_is_better": True},
            "visit": {"event_type": ["view"], "window_days": 14, "covariate": "none"},
        })
    )  # fmt: skip
    catalogue = settings.experiments.catalogue
    assert list(catalogue) == [
        "conversion_rate",
        "click_rate",
        "revenue_per_user",
        "visit",
        "units",
        "carts",
        "orders",
    ]
    assert catalogue["carts"].event_type == ["add_to_cart"] and catalogue["carts"].metric_kind == "continuous"
    assert catalogue["visit"].window_days == 14 and catalogue["visit"].covariate_choice == "none"
    assert (
        catalogue["orders"].metric_kind == "binary" and catalogue["orders"].covariate_choice == "pre_period"
    )
    assert catalogue["conversion_rate"].covariate_choice == "events_before"
    assert catalogue["units"].outcome_window_days == 7 and catalogue["units"].sum_of == "quantity"


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ({"event_type": "opened", "window_days": 7}, "event_type opened is not one of view, click"),
        ({"event_type": "view", "sql": "x.sql", "kind": "binary"}, "exactly one of event_type, sql"),
        ({"window_days": 7}, "exactly one of event_type, sql"),
        ({"event_type": "view", "aggregate": "count", "kind": "binary"}, "kind binary needs aggregate any"),
        ({"event_type": "view", "kind": "continuous"}, "aggregate any is binary"),
        ({"sql": "x.sql"}, "an SQL metric must say its kind"),
        ({"event_type": "view", "window_days": 0}, "metrics.m.window_days"),
        (
            {"exposure_outcome": "is_converted", "covariate": "pre_period"},
            "an exposure outcome has no pre-period",
        ),
        # a covariate is arithmetic on the unit's columns: nothing that could reach further
        (
            {"event_type": "view", "covariate": "events_before; drop table x"},
            "unexpected ';' at character 14",
        ),
        ({"event_type": "view", "covariate": "'a' || country"}, 'unexpected "\'" at character 1'),
        (
            {"event_type": "view", "covariate": "read_csv(events_before)"},
            "read_csv() is not one of ln, log10",
        ),
        ({"event_type": "view", "covariate": "ln + 1"}, "ln is a function, call it as ln(...)"),
        ({"event_type": "view", "covariate": "Events_Before"}, "unexpected 'E' at character 1"),
    ],
)
def test_a_metric_definition_that_cannot_work_is_refused_naming_it(
    tmp_path: Path, metric: dict, expected: str
) -> None:
    with pytest.raises(ConfigError, match=r"key 'experiments\.metrics\.m") as error:
        load_settings(_with_metrics(tmp_path, {"m": metric}))
    assert expected in str(error.value)


def test_metric_names_are_plain_identifiers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"experiments\.metrics\.Visits.*should match pattern"):
        load_settings(_with_metrics(tmp_path, {"Visits": {"event_type": "view"}}))


def test_a_covariate_reads_only_behaviour_columns_and_declared_numeric_users_attributes(
    tmp_path: Path,
) -> None:
    declared = {"attributes": {"past_year_spend": "numeric", "channel_type": "categorical"}}

    def load(covariate: str, user_features: dict | None = None):
        data = minimal() | {"experiments": {"metrics": {"m": {"event_type": "view", "covariate": covariate}}}}
        return load_settings(
            write(tmp_path, data | ({"user_features": user_features} if user_features else {}))
        )

    with pytest.raises(ConfigError) as error:
        load("past_year_spend")
    message = str(error.value)
    assert "key 'experiments.metrics.m.covariate': 'past_year_spend' is neither a behaviour column" in message
    assert "(none declared; declare it in user_features.attributes as numeric)" in message
    settings = load("ln(1 + past_year_spend) + events_before", declared)
    assert settings.experiments.catalogue["m"].attributes == ["past_year_spend"]
    # a categorical attribute is no number, Tailor's own users columns are text, a unit's id is no attribute
    for covariate in ("channel_type", "country", "user_id + 1"):
        with pytest.raises(
            ConfigError,
            match=r"is neither a behaviour column \(events_before.*\) nor a numeric users attribute \(past_year_spend;",
        ):
            load(covariate, declared)
    settings = load("greatest(events_before, clicks_before)")
    assert settings.experiments.catalogue["m"].attributes == []


def test_a_metric_sql_file_must_exist_and_read_only_its_parameters(tmp_path: Path) -> None:
    metric = {"sql": "metrics/orders.sql", "kind": "continuous"}
    with pytest.raises(ConfigError, match=r"key 'experiments\.metrics\.orders\.sql': cannot read SQL file"):
        load_settings(_with_metrics(tmp_path, {"orders": metric}))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "orders.sql").write_text(
        "select * from t where d < $run_date and c = $campaign_id"
    )
    with pytest.raises(ConfigError) as error:
        load_settings(_with_metrics(tmp_path, {"orders": metric}))
    assert (
        "reads $run_date; a metric's SQL is given $campaign_id, $window_start, $cutoff, $cutoff_day"
        in str(error.value)
    )


@pytest.mark.parametrize(
    ("user_features", "sources_users", "message"),
    [
        ({"attributes": {"Past Spend": "numeric"}}, {}, "lowercase identifier"),
        ({"attributes": {"country": "categorical"}}, {}, "already a users column"),
        ({"attributes": {"spend": "money"}}, {}, "attributes.spend"),
        ({"sql": "features.sql"}, {}, "sql and sql_columns go together"),
        ({"sql": "f.sql", "sql_columns": {"spend": "numeric"}, "attributes": {"spend": "numeric"}}, {},
         "already declared in attributes"),
        ({}, {"columns": {"spend": "PastSpend"}}, "not a column of users nor an attribute"),
    ],
)  # fmt: skip
def test_user_features_config_names_the_key_that_is_wrong(
    user_features: dict, sources_users: dict, message: str
) -> None:
    from tests import tiny

    sources = {name: {"path": f"{name}.csv"} for name in ("users", "consents", "items", "interactions")}
    sources["users"] |= sources_users
    with pytest.raises(ValueError, match=message):
        tiny.settings(user_features=user_features, sources=sources)


def test_a_declared_attribute_may_be_mapped_from_the_file() -> None:
    from tests import tiny

    sources = {name: {"path": f"{name}.csv"} for name in ("users", "consents", "items", "interactions")}
    sources["users"]["columns"] = {"past_year_spend": "PastYearSpend"}
    settings = tiny.settings(user_features={"attributes": {"past_year_spend": "numeric"}}, sources=sources)
    assert settings.user_features.feature_names == ("past_year_spend",)
