"""`tailor init DIR`: a company's own project folder, outside Tailor's repository.

The folder holds everything a company changes and nothing of Tailor's code:

    tailor.yaml          the config, every key a new user needs explained in comments
    sql/<table>.sql      one mapping per canonical table: the company's files -> Tailor's columns
    campaigns/*.yaml     one campaign per file
    data/<table>/        where the files go (tiny example files to start with, and a README)

The example files are shaped like a shop's exports (their own column names), so the skeleton SQL shows
the renames a real mapping needs, and `tailor check` passes on them right after init.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from pathlib import Path

from tailor.config import REQUIRED_SOURCES
from tailor.schema import TABLES, Column, Table


class InitError(RuntimeError):
    """A folder `tailor init` must not write into; the message names it."""


# The example exports' column for each canonical column: the skeleton SQL renames one into the other,
# and selects `null` for a canonical column the example lacks (an optional one the shop does not keep).
EXAMPLE_COLUMNS: dict[str, dict[str, str]] = {
    "users": {
        "user_id": "customer_id",
        "created_at": "signed_up_at",
        "country": "country",
        "language": "language",
        "age_band": "age_band",
        "gender": "gender",
        "email": "email",
    },
    "consents": {
        "user_id": "customer_id",
        "purpose": "purpose",
        "is_granted": "granted",
        "updated_at": "changed_at",
    },
    "items": {
        "item_id": "sku",
        "title": "name",
        "category": "category",
        "tags": "tags",
        "price_cents": "price_cents",
        "published_at": "listed_at",
        "expires_at": "expires_at",
        "is_available": "in_stock",
    },
    "interactions": {
        "user_id": "customer_id",
        "item_id": "sku",
        "event_type": "event",
        "occurred_at": "event_time",
        "value": "amount",
    },
    "campaign_exposures": {
        "campaign_id": "campaign_id",
        "variant_id": "variant_id",
        "user_id": "customer_id",
        "sent_at": "sent_at",
        "opened_at": "opened_at",
        "clicked_at": "clicked_at",
        "converted_at": "converted_at",
        "revenue_cents": "revenue_cents",
    },
    "deletion_requests": {"user_id": "customer_id", "requested_at": "requested_at"},
}
EXAMPLE_FILE = "example.csv"  # one per data/<table>/ folder; README says to remove them
_PROJECT_NAME = re.compile(r"[^a-z0-9_-]+")


def project_name(folder: Path) -> str:
    """The config's `project` from the folder's name, made to fit its pattern (lowercase, digits, - and _)."""
    name = _PROJECT_NAME.sub("-", folder.resolve().name.lower()).strip("-_")
    return name or "my-company"


def init_project(folder: Path, project: str | None = None) -> list[Path]:
    """Write a new project folder; refuse one that exists and holds anything. Returns the files written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "is a file" if not folder.is_dir() else "is not empty"
        raise InitError(f"{folder} {what}: tailor init writes only into a new or empty folder")
    name = project or project_name(folder)
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise InitError(f"project name {name!r} must be lowercase letters, digits, - and _")
    files: dict[str, str] = {
        "tailor.yaml": config_text(name),
        "campaigns/welcome_back.yaml": CAMPAIGN,
        "data/README.md": DATA_README,
        ".gitignore": "# written by runs: the warehouse, run folders, local outputs\nvar/\npublished/\n",
    }
    for table in TABLES.values():
        files[f"sql/{table.name}.sql"] = skeleton_sql(table)
        files[f"data/{table.name}/{EXAMPLE_FILE}"] = example_csv(table.name)
    written = []
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _column_comment(column: Column) -> str:
    need = "required" if column.required else "optional"
    return f"{column.duckdb_type}, {need}" + (f": {column.description}" if column.description else "")


def _group(column: Column) -> str:
    if column.name.endswith("_id"):
        return "ids"
    if column.duckdb_type == "TIMESTAMP":
        return "timestamps"
    return "attributes"


def skeleton_sql(table: Table) -> str:
    """The table's mapping as named CTEs: read the file, rename its columns to Tailor's, select them."""
    example = EXAMPLE_COLUMNS[table.name]
    selected: list[tuple[str, str]] = []  # (expression, comment) under group headings
    for group in ("ids", "timestamps", "attributes"):
        columns = [c for c in table.columns if _group(c) == group]
        if not columns:
            continue
        selected.append((f"-- {group}", ""))
        for column in columns:
            file_column = example.get(column.name)
            if file_column is None:
                # the example export lacks this optional column: the skeleton shows how to leave it out
                expression = f"null as {column.name}"
            elif file_column == column.name:
                expression = column.name
            else:
                expression = f"{file_column} as {column.name}"
            selected.append((expression, _column_comment(column)))
    last = max(i for i, (expression, _) in enumerate(selected) if not expression.startswith("--"))
    width = max(len(expression) for expression, comment in selected if comment) + 1
    lines = []
    for i, (expression, comment) in enumerate(selected):
        if not comment:
            lines.append(f"        {expression}")
            continue
        text = expression + ("" if i == last else ",")
        lines.append(f"        {text:<{width}}  -- {comment}")
    body = "\n".join(lines)
    extra = INTERACTIONS_NOTE if table.name == "interactions" else ""
    return f"""-- {table.name}: {table.description}
--
-- Tailor runs this once per file matching sources.{table.name}.path in tailor.yaml; that file is $file.
-- Make `source` read your export and `final` name its columns as Tailor's (the comments give each
-- column's type). Values may stay text: Tailor parses each to its type, keeps a value that does not
-- parse with its original text, and `tailor check` names its file and column. A timestamp without an
-- offset is read as UTC. An optional column you do not have can be `null as <column>`.{extra}
with source as (
    select * from read_csv($file, header = true, all_varchar = true)
),

final as (
    select
{body}
    from source
)

select * from final
"""


INTERACTIONS_NOTE = """
--
-- More files: name them under sources.interactions.inputs in tailor.yaml (orders: data/orders/*.csv)
-- and read each here as a CTE, e.g. `orders as (select * from read_csv($orders, all_varchar = true))`:
-- $orders is the list of its files. A changed input file reloads every file of this source."""


# --- the example exports: a small shop, six weeks of behaviour (enough for the default training windows)

_START = datetime(2026, 1, 1, 9, 0)
_CUSTOMERS = ("c1001", "c1002", "c1003", "c1004", "c1005", "c1006", "c1007")
_SKUS = ("s001", "s002", "s003", "s004", "s005", "s006", "s007", "s008")
_CATEGORIES = ("home", "garden", "books", "home", "books", "garden", "home", "books")
_EVENTS = ("view", "view", "click", "add_to_cart", "purchase")
_EXAMPLE_DAYS = 42


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def example_rows(table: str) -> list[dict[str, str]]:
    """The example export's rows, keyed by the canonical column (written under EXAMPLE_COLUMNS' names)."""
    if table == "users":
        countries, languages = ("DE", "FR", "NL", "DE", "ES", "FR", "IT"), ("de", "fr", "nl", "de", "es", "fr", "it")
        bands, genders = ("25-34", "35-44", "18-24", "45-54", "25-34", "55-64", "35-44"), ("female", "male")
        return [
            {
                "user_id": customer,
                "created_at": _stamp(_START - timedelta(days=30 - 4 * i)),
                "country": countries[i],
                "language": languages[i],
                "age_band": bands[i],
                "gender": genders[i % 2],
                "email": f"{customer}@example.com",
            }
            for i, customer in enumerate(_CUSTOMERS)
        ]
    if table == "consents":
        return [
            {
                "user_id": customer,
                "purpose": purpose,
                # one customer declined push: a campaign on push never reaches them
                "is_granted": "false" if (customer, purpose) == ("c1002", "marketing_push") else "true",
                "updated_at": _stamp(_START - timedelta(days=30 - 4 * i, hours=-1)),
            }
            for i, customer in enumerate(_CUSTOMERS)
            for purpose in ("marketing_email", "marketing_push", "profiling")
        ]
    if table == "items":
        return [
            {
                "item_id": sku,
                "title": f"{category.title()} pick {i + 1}",
                "category": category,
                "tags": f"{category},example",
                "price_cents": str(990 + 500 * i),
                "published_at": _stamp(_START - timedelta(days=60 - i)),
                "expires_at": "",
                "is_available": "true" if i != 7 else "false",
            }
            for i, (sku, category) in enumerate(zip(_SKUS, _CATEGORIES, strict=True))
        ]
    if table == "interactions":
        rows = []
        active = _CUSTOMERS[:6]  # the seventh customer asked to be erased and has no behaviour
        for day in range(_EXAMPLE_DAYS):
            for slot in range(2):
                n = 2 * day + slot
                event = _EVENTS[n % len(_EVENTS)]
                sku = _SKUS[(3 * day + 5 * slot) % len(_SKUS)]
                rows.append(
                    {
                        "user_id": active[n % len(active)],
                        "item_id": sku,
                        "event_type": event,
                        "occurred_at": _stamp(_START + timedelta(days=day, hours=3 * slot, minutes=n % 50)),
                        "value": str(990 + 500 * _SKUS.index(sku)) if event == "purchase" else "",
                    }
                )
        return rows
    if table == "campaign_exposures":
        rows = []
        for week in range(3):
            sent = _START + timedelta(days=21 + 7 * week, hours=1)
            for i, customer in enumerate(_CUSTOMERS[:6]):
                variant = ("holdout", "reminder", "discount")[(i + week) % 3]
                opened = variant != "holdout" and (i + week) % 2 == 0
                rows.append(
                    {
                        "campaign_id": "welcome_back",
                        "variant_id": variant,
                        "user_id": customer,
                        "sent_at": _stamp(sent),
                        "opened_at": _stamp(sent + timedelta(hours=2)) if opened else "",
                        "clicked_at": _stamp(sent + timedelta(hours=3)) if opened and i % 3 == 0 else "",
                        "converted_at": "",
                        "revenue_cents": "",
                    }
                )
        return rows
    if table == "deletion_requests":
        return [{"user_id": "c1007", "requested_at": _stamp(_START + timedelta(days=20))}]
    raise KeyError(table)


def example_csv(table: str) -> str:
    mapping = EXAMPLE_COLUMNS[table]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(mapping.values())
    for row in example_rows(table):
        writer.writerow(row[canonical] for canonical in mapping)
    return out.getvalue()


def config_text(project: str) -> str:
    sources = "\n".join(
        f"  {name}:\n    path: data/{name}/*.csv\n    sql: sql/{name}.sql" + _SOURCE_NOTES.get(name, "")
        for name in TABLES
    )
    # the comment column stays aligned whatever the name's length
    project_line = f"project: {project}".ljust(33) + " # names this project in logs and outputs"
    required = ", ".join(REQUIRED_SOURCES[:-1]) + f" and {REQUIRED_SOURCES[-1]}"
    return _CONFIG.format(project_line=project_line, sources=sources, required=required)


_SOURCE_NOTES = {
    "users": "            # a later file may restate a user: the newest file wins",
    "interactions": """
    # inputs:                       # more files its SQL joins in, each read there as $<name>
    #   orders: data/orders/*.csv   #   (a list of files); a changed input reloads this source's files""",
    "campaign_exposures": "  # optional: who got which campaign variant, and what they did",
    "deletion_requests": "   # optional: users to erase from everything, in the run that reads them",
}

_CONFIG = """# A Tailor project: written by `tailor init`. Paths are relative to this file's folder.
#
#   tailor check --config tailor.yaml                  # map your files, show what Tailor sees, list problems
#   tailor run --config tailor.yaml --target file://published   # one night, published to a folder
#
# Secrets are never written here: S3 credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY or AWS_PROFILE; AWS_ENDPOINT_URL for an S3-compatible store), and the key that
# pseudonymises published user ids and keys the deletion register from the variable named by
# publish.pseudonym_key_env (every run needs it, whatever published_user_id says).
{project_line}
timezone: UTC                     # run dates are days in this zone; a run reads data up to its midnight
seed: 42                          # drives every split, sample and model: same data, same outputs

warehouse:
  path: var/tailor.duckdb         # Tailor's own DuckDB file (created on the first run)
  runs_dir: var/runs              # each run's working folder

# storage:                        # only for s3:// sources or targets
#   endpoint_url: https://s3.example.com   # an S3-compatible endpoint; default AWS_ENDPOINT_URL or AWS
#   region: eu-central-1

# One entry per canonical table. path: a local glob (relative to this file) or s3://bucket/prefix/*.csv;
# a file named with a date (2026-01-31.csv) is loaded once, by the run after that date; an undated file
# is a snapshot, loaded again whenever it changes. sql: the mapping from your file to Tailor's columns,
# run on each file as $file (see sql/). {required} are required.
sources:
{sources}

publish:
  target: file://published        # file://FOLDER or s3://BUCKET/PREFIX; `tailor run --target` overrides it
  published_user_id: pseudonymous # published ids are a keyed hash of user_id; `external`: the raw user_id
  pseudonym_key_env: TAILOR_PSEUDONYM_KEY   # the environment variable holding that hash's key
  # external_id_datasets: [user_updates]    # datasets a campaign system matches on your real id

# Training looks back (2 + propensity.training_windows) x propensity.horizon_days days before each run,
# 28 days with these values: `tailor check` says when the interactions do not reach back that far.
propensity:
  horizon_days: 7                 # predicts a purchase within this many days
  training_windows: 3             # past windows stacked for training

ranking:
  label_days: 7                   # the ranker learns from the interactions of this many days
  # may customers be offered what they bought before? auto: yes when enough purchases are repeats
  # (groceries, supplies), no otherwise; the run says what it chose and why. Or: allow, exclude.
  repeat_purchases: auto

recommendations:
  k: 10                           # items per user
  channels: [email, push, web]    # each needs the user's consent for it (consents.purpose)
  # exclude:                      # items never recommended (SQL LIKE patterns on item_id, case-insensitive)
  #   categories: [fuel, gift cards]
  #   item_id_patterns: ["POST%", "FEE%"]
  #   min_price_cents: 1

# registry:
#   baseline_margin: 0.02         # a model serves only if it beats its best simple baseline by 2%

schedule:
  cron: "0 2 * * *"               # `tailor serve`: the nightly run's start, in `timezone`

# notifications:                  # who hears of a failed run (addresses of secrets, never the secrets)
#   webhook_url_env: TAILOR_WEBHOOK_URL
#   smtp: {{host: smtp.example.com, sender: tailor@example.com, recipients: [data@example.com],
#          username_env: TAILOR_SMTP_USER, password_env: TAILOR_SMTP_PASSWORD}}

# Campaigns: one file each in campaigns/ beside this file (campaigns_dir names another folder).
"""

CAMPAIGN = """# An example campaign (written by `tailor init`): an email to customers drifting away. Every active
# campaign's audience is split between a holdout (never contacted, the baseline) and the variants.
campaign_id: welcome_back
channel: email                    # email, push or web; each needs the user's consent for it
audience:
  segments: [at_risk, lapsed]     # RFM segments (segments.rfm_rules); empty: every consented user
holdout_share: 0.1                # never contacted: what the variants are measured against
salt: "2026"                      # change it to reshuffle who is in which group
allocation:
  policy: split                   # split by weight; bandit and personalized learn from the results
variants:                         # Jinja2 templates: user.*, segment and items[] (recommended items)
  - variant_id: reminder
    subject: "We kept some picks for you"
    headline: "Picked for you: {{ items[0].title if items else 'our bestsellers' }}"
    body: |
      <ul>{% for item in items %}<li>{{ item.title }}: {{ item.reason }}</li>{% endfor %}</ul>
    call_to_action: "See your picks"
  - variant_id: discount
    subject: "10% off {{ items[0].category if items else 'everything' }} this week"
    headline: "Come back for 10% off"
    body: |
      <ul>{% for item in items %}<li>{{ item.title }}</li>{% endfor %}</ul>
    call_to_action: "Claim 10% off"
"""

DATA_README = """# Your data

Put each table's files in its folder here, or point `sources.<table>.path` in `../tailor.yaml` at
another folder or at `s3://bucket/prefix/*.csv`:

| folder | what | required |
|---|---|---|
""" + "".join(
    f"| `{name}/` | {table.description} | {'yes' if name in REQUIRED_SOURCES else 'no'} |\n"
    for name, table in TABLES.items()
) + f"""
- Each folder holds an `{EXAMPLE_FILE}` shaped like a shop's export: remove it when your files are in.
- Name a daily file with its date (`2026-01-31.csv`): the run of the next day loads it, once. A file
  without a date is a full snapshot, loaded again whenever it changes.
- Your files keep their own columns: `../sql/<table>.sql` maps them onto Tailor's (types and meaning
  are in its comments). CSV, Parquet and JSON lines are read by DuckDB (`read_csv`, `read_parquet`,
  `read_json`).
- After any change, `tailor check --config tailor.yaml` loads the files into a scratch database and
  shows what each table holds and every problem, by file and column.
- Real files hold personal data: keep them out of version control.
"""
