"""The canonical input tables and shared column names: the one place that spells them."""

from __future__ import annotations

from dataclasses import dataclass

# ids
USER_ID = "user_id"
ITEM_ID = "item_id"
CAMPAIGN_ID = "campaign_id"
VARIANT_ID = "variant_id"
# lineage columns added at extract
ROW_KEY = "_row_key"
INVALID_COLUMNS = "_invalid_columns"
ORIGINAL_VALUES = "_original_values"
SOURCE_FILE = "_source_file"
FILE_DATE = "_file_date"
LOADED_RUN_DATE = "_loaded_run_date"

# columns whose values identify or describe a person: never quoted in logs or error messages
PERSONAL_COLUMNS = (USER_ID, "email", "age_band", "gender")
# 'return' is a return or cancellation; staging also reads a purchase line with a negative quantity as one
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "return")
CONSENT_PURPOSES = ("marketing_email", "marketing_push", "profiling")
CHANNELS = ("email", "push", "web")
# the published datasets, in the order the manifest lists them (docs/outputs.md is their contract)
DATASET_NAMES = (
    "recommendations", "user_scores", "segments", "segment_profiles", "item_audiences", "content",
    "personalize_batch", "personalize_segments", "user_updates", "user_deletes", "experiment_results",
    "uplift_evaluation", "allocation_decisions", "fairness_audit", "data_quality",
)  # fmt: skip


@dataclass(frozen=True)
class Column:
    name: str
    duckdb_type: str
    required: bool = True
    description: str = ""
    # an event time: it cannot lie after the run's cutoff nor implausibly far before it
    is_event_time: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    description: str
    may_be_empty: bool = False  # no file yet is normal (nobody asked to be erased)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    @property
    def event_time_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_event_time)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


TABLES: dict[str, Table] = {
    table.name: table
    for table in (
        Table(
            "users",
            (
                Column(USER_ID, "VARCHAR", description="the company's user id"),
                Column("created_at", "TIMESTAMP", description="sign-up time (UTC)", is_event_time=True),
                Column("country", "VARCHAR", False, "ISO 3166-1 alpha-2 country code"),
                Column("language", "VARCHAR", False, "ISO 639-1 language code"),
                Column("age_band", "VARCHAR", False, "age band such as 25-34 (sensitive)"),
                Column("gender", "VARCHAR", False, "self-declared gender (sensitive)"),
                Column("email", "VARCHAR", False, "direct identifier: never published"),
            ),
            (USER_ID,),
            "One row per user; a later file may restate a user, the newest file wins.",
        ),
        Table(
            "consents",
            (
                Column(USER_ID, "VARCHAR"),
                Column("purpose", "VARCHAR", description="marketing_email, marketing_push or profiling"),
                Column("is_granted", "BOOLEAN"),
                Column("updated_at", "TIMESTAMP", is_event_time=True),
            ),
            (USER_ID, "purpose", "updated_at"),
            "Consent history; the latest row per user and purpose wins.",
        ),
        Table(
            "items",
            (
                Column(ITEM_ID, "VARCHAR"),
                Column("title", "VARCHAR"),
                Column("category", "VARCHAR"),
                Column("tags", "VARCHAR", False, "comma-separated tags"),
                Column("price_cents", "BIGINT", False),
                Column("published_at", "TIMESTAMP"),
                Column("expires_at", "TIMESTAMP", False, "no longer offered from this time"),
                Column("is_available", "BOOLEAN", False, "in stock / offered now"),
                Column("brand", "VARCHAR", False, "the brand or maker"),
                Column("department", "VARCHAR", False, "the store department, above category"),
            ),
            (ITEM_ID,),
            "Content or products; a later file may restate an item, the newest file wins.",
        ),
        Table(
            "interactions",
            (
                Column(USER_ID, "VARCHAR"),
                Column(ITEM_ID, "VARCHAR"),
                Column(
                    "event_type", "VARCHAR", description="view, click, add_to_cart, purchase, rating, return"
                ),
                Column("occurred_at", "TIMESTAMP", is_event_time=True),
                Column(
                    "value",
                    "DOUBLE",
                    False,
                    "rating value, or the line's amount in cents (default quantity x unit_price_cents); "
                    "negative for a return",
                ),
                Column("order_id", "VARCHAR", False, "the basket or invoice the line belongs to"),
                Column(
                    "quantity", "DOUBLE", False, "units on the line; negative for a return or cancellation"
                ),
                Column("unit_price_cents", "BIGINT", False, "price of one unit"),
                Column(
                    "channel",
                    "VARCHAR",
                    False,
                    "where it happened: a channel or store, e.g. online, store-12",
                ),
            ),
            # with order_id in the key, the same item at the same instant in two orders is two events
            (USER_ID, ITEM_ID, "event_type", "occurred_at", "order_id"),
            "Behavioural events; for a retailer, order lines (baskets, quantities, prices, returns).",
        ),
        Table(
            "campaign_exposures",
            (
                Column(CAMPAIGN_ID, "VARCHAR"),
                Column(VARIANT_ID, "VARCHAR", description="'holdout' for the holdout group"),
                Column(USER_ID, "VARCHAR"),
                Column("sent_at", "TIMESTAMP", is_event_time=True),
                Column("opened_at", "TIMESTAMP", False, is_event_time=True),
                Column("clicked_at", "TIMESTAMP", False, is_event_time=True),
                Column("converted_at", "TIMESTAMP", False, is_event_time=True),
                Column("revenue_cents", "BIGINT", False),
            ),
            (CAMPAIGN_ID, USER_ID, "sent_at"),
            "Who got which variant of which campaign, and what they did.",
        ),
        Table(
            "deletion_requests",
            (
                Column(USER_ID, "VARCHAR", description="the user to erase"),
                Column("requested_at", "TIMESTAMP", False, "when the user asked", is_event_time=True),
            ),
            (USER_ID,),
            "Right-to-erasure requests: the next run removes every trace of the user (optional source).",
            may_be_empty=True,
        ),
    )
}

# Columns whose values must come from a closed set (compared after trimming and lower-casing).
ALLOWED_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("interactions", "event_type"): EVENT_TYPES,
    ("consents", "purpose"): CONSENT_PURPOSES,
}
# The oldest event time a run accepts, in years before its cutoff.
MAX_EVENT_AGE_YEARS = 20

# how a declared user attribute (config user_features.attributes) is stored
ATTRIBUTE_TYPES = {"categorical": "VARCHAR", "numeric": "DOUBLE"}


def source_table(name: str, attributes: dict[str, str] | None = None) -> Table:
    """A source's table as this company loads it: the users table gains the attributes its config declares
    (name -> categorical or numeric), optional columns after the canonical ones."""
    table = TABLES[name]
    if name != "users" or not attributes:
        return table
    declared = tuple(
        Column(attribute, ATTRIBUTE_TYPES[kind], False, f"the company's own {kind} attribute")
        for attribute, kind in attributes.items()
    )
    return Table(table.name, (*table.columns, *declared), table.key, table.description, table.may_be_empty)
