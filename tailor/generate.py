"""A realistic synthetic company: users with latent tastes, a long-tailed catalogue, weekly seasonality,
trending and expiring items, consent changes and campaign outcomes that depend on user and variant.

Everything is drawn from one numpy Generator seeded from `--seed`, day by day, so memory stays bounded by a
day's events and a million users fit. The ground truth the simulation used goes to `truth/`, apart from the
sources, so tests can check that models find real signal.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from tailor.schema import TABLES

CATEGORIES = (
    "electronics", "books", "fashion", "home", "garden", "sports", "toys", "beauty",
    "grocery", "music", "movies", "games", "travel", "pets", "health", "auto",
)  # fmt: skip
GENRES_PER_CATEGORY = 5
COUNTRIES = {"DE": "de", "FR": "fr", "GB": "en", "US": "en", "ES": "es", "IT": "it", "NL": "nl", "PL": "pl"}
COUNTRY_SHARES = np.array([0.22, 0.14, 0.14, 0.2, 0.09, 0.08, 0.07, 0.06])
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_SHARES = np.array([0.14, 0.26, 0.22, 0.18, 0.12, 0.08])
GENDERS = ("female", "male", "undisclosed")
GENDER_SHARES = np.array([0.49, 0.47, 0.04])
# Monday .. Sunday: people browse and buy more at the weekend.
WEEKDAY_FACTOR = np.array([0.9, 0.85, 0.9, 0.95, 1.05, 1.2, 1.15])
CONSENT_GRANT_SHARE = {"marketing_email": 0.7, "marketing_push": 0.45, "profiling": 0.8}
ATTRIBUTION_DAYS = 3
TITLE_WORDS = (
    "Classic", "Essential", "Pro", "Compact", "Deluxe", "Urban", "Vintage", "Smart", "Eco", "Premium",
    "Daily", "Family", "Studio", "Outdoor", "Mini", "Ultra", "Signature", "Travel", "Home", "Bold",
)  # fmt: skip


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    channel: str
    consent_purpose: str
    variants: tuple[str, ...]
    every_days: int
    reach_share: float


CAMPAIGNS = (
    Campaign("weekly_digest", "email", "marketing_email", ("discount", "editorial", "new_arrivals"), 7, 0.5),
    Campaign("app_nudge", "push", "marketing_push", ("urgency", "social_proof"), 10, 0.4),
)
HOLDOUT_SHARE = 0.1


@dataclass
class World:
    """The latent state of the simulated company."""

    start: date
    end: date
    # users
    user_created_day: np.ndarray  # day offset from start (negative: before the window)
    country: np.ndarray
    age_band: np.ndarray
    gender: np.ndarray
    genre_taste_cdf: np.ndarray  # users x genres, float32
    activity: np.ndarray  # expected sessions per day
    daily_purchase_prob: np.ndarray
    price_sensitivity: np.ndarray  # latent, drives which campaign variant works
    focus: np.ndarray  # how concentrated the user's taste is, standardised
    # items
    item_genre: np.ndarray
    item_category: np.ndarray
    item_price_cents: np.ndarray
    item_published_day: np.ndarray
    item_expires_day: np.ndarray  # large value = never
    item_base_popularity: np.ndarray
    item_trend_peak_day: np.ndarray  # -1000 = not a trending item

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def build_world(
    rng: np.random.Generator, n_users: int, n_items: int, start: date, end: date, plant_bias: bool = False
) -> World:
    days = (end - start).days + 1
    n_genres = len(CATEGORIES) * GENRES_PER_CATEGORY
    category_share = 1.0 / np.arange(1, len(CATEGORIES) + 1) ** 0.6
    category_share /= category_share.sum()

    # items: a long tail of popularity, a share published during the window, some trending, some expiring
    item_category = rng.choice(len(CATEGORIES), size=n_items, p=category_share)
    item_genre = item_category * GENRES_PER_CATEGORY + rng.integers(0, GENRES_PER_CATEGORY, n_items)
    category_price = rng.lognormal(7.5, 0.6, len(CATEGORIES))
    item_price = np.round(category_price[item_category] * rng.lognormal(0, 0.5, n_items)).astype(np.int64)
    is_new = rng.random(n_items) < 0.25
    published = np.where(is_new, rng.integers(0, days, n_items), -rng.integers(1, 365, n_items))
    expires = np.where(rng.random(n_items) < 0.15, published + rng.integers(14, 75, n_items), 10**6)
    popularity = rng.pareto(1.3, n_items) + 0.05
    trend_peak = np.where(rng.random(n_items) < 0.08, rng.integers(0, days + 14, n_items), -1000)

    # users: latent tastes over genres (sparse), activity, purchase propensity from observable traits
    created = np.where(
        rng.random(n_users) < 0.8, -rng.integers(1, 730, n_users), rng.integers(0, days, n_users)
    )
    country = rng.choice(len(COUNTRIES), size=n_users, p=COUNTRY_SHARES)
    age = rng.choice(len(AGE_BANDS), size=n_users, p=AGE_SHARES)
    gender = rng.choice(len(GENDERS), size=n_users, p=GENDER_SHARES)
    category_taste = rng.dirichlet(np.full(len(CATEGORIES), 0.25), n_users).astype(np.float32)
    genre_within = rng.dirichlet(np.full(GENRES_PER_CATEGORY, 0.5), (n_users, len(CATEGORIES)))
    taste = (category_taste[:, :, None] * genre_within.astype(np.float32)).reshape(n_users, n_genres)
    cdf = np.cumsum(taste, axis=1, dtype=np.float32)
    cdf[:, -1] = 1.0
    focus = _zscore((category_taste**2).sum(axis=1))
    activity = rng.lognormal(np.log(0.45), 0.8, n_users)
    if plant_bias:
        # a biased world for the fairness audit: women are far more active than men, so everything learnt
        # from behaviour (propensity, the personalized variant choice) differs by gender
        activity *= np.where(
            gender == GENDERS.index("female"), 2.5, np.where(gender == GENDERS.index("male"), 0.4, 1.0)
        )
    # Purchase propensity depends on behaviour, market and tenure, never on a sensitive attribute: a model
    # that may not use age or gender can still reach the ceiling the truth sets.
    tenure_effect = -0.25 * _zscore(np.log1p(np.maximum(days - created, 1)))
    country_effect = np.array([0.1, 0.0, 0.05, 0.15, -0.15, -0.1, 0.05, -0.2])
    log_activity = _zscore(np.log(activity))
    purchase_logit = (
        -4.4 + 0.9 * log_activity + tenure_effect + country_effect[country] + rng.normal(0, 0.25, n_users)
    )
    price_sensitivity = _zscore(-0.35 * age + rng.normal(0, 1.0, n_users))
    return World(
        start=start,
        end=end,
        user_created_day=created,
        country=country,
        age_band=age,
        gender=gender,
        genre_taste_cdf=cdf,
        activity=activity,
        daily_purchase_prob=_sigmoid(purchase_logit),
        price_sensitivity=price_sensitivity,
        focus=focus,
        item_genre=item_genre,
        item_category=item_category,
        item_price_cents=item_price,
        item_published_day=published,
        item_expires_day=expires,
        item_base_popularity=popularity,
        item_trend_peak_day=trend_peak,
    )


def _id_expr(prefix: str, column: str, width: int) -> pl.Expr:
    return pl.lit(prefix) + pl.col(column).cast(pl.Utf8).str.zfill(width)


def _timestamps(day_offsets: np.ndarray, seconds: np.ndarray, start: date) -> np.ndarray:
    base = np.datetime64(start, "s")
    stamps = base + day_offsets.astype("timedelta64[D]") + seconds.astype("timedelta64[s]")
    return stamps.astype("datetime64[ms]")


class Writer:
    """Writes one table's rows into daily files `sources/<table>/<YYYY-MM-DD>.<fmt>`."""

    def __init__(self, out: Path, fmt: str) -> None:
        self.out = out
        self.fmt = fmt

    def write_day(self, table: str, day: date, frame: pl.DataFrame) -> None:
        folder = self.out / "sources" / table
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{day.isoformat()}.{self.fmt}"
        if self.fmt == "csv":
            frame.write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")
        else:
            frame.write_parquet(path, statistics=False)

    def write_by_day(self, table: str, frame: pl.DataFrame, day_column: str, start: date) -> None:
        for (day_offset,), part in (
            frame.sort(day_column).partition_by(day_column, as_dict=True, maintain_order=True).items()
        ):
            self.write_day(table, start + timedelta(days=int(day_offset)), part.drop(day_column))


def write_users(world: World, writer: Writer, seed: int) -> None:
    n = len(world.country)
    width = len(str(n))
    idx = np.arange(n)
    created_seconds = np.random.default_rng([seed, 1]).integers(0, 86_400, n)
    frame = pl.DataFrame(
        {
            "user_id": idx,
            "created_at": _timestamps(world.user_created_day, created_seconds, world.start),
            "country": np.array(list(COUNTRIES))[world.country],
            "language": np.array(list(COUNTRIES.values()))[world.country],
            "age_band": np.array(AGE_BANDS)[world.age_band],
            "gender": np.array(GENDERS)[world.gender],
            "file_day": np.maximum(world.user_created_day, 0),
        }
    ).with_columns(
        _id_expr("u", "user_id", width).alias("user_id"),
        (pl.lit("user") + pl.col("user_id").cast(pl.Utf8) + pl.lit("@example.com")).alias("email"),
    )
    writer.write_by_day("users", frame.with_columns(**customer_attributes(world, seed)), "file_day", world.start)


# The customer attributes a company keeps beside behaviour (declared under user_features.attributes in the
# generated config). coupon_share, the share of past orders placed with a coupon, reveals the price
# sensitivity that decides which campaign variant works for a user and that no behavioural feature shows.
ACQUISITION_CHANNELS = ("search", "social", "referral", "store")
GENERATED_ATTRIBUTES = {"coupon_share": "numeric", "acquisition_channel": "categorical"}


def customer_attributes(world: World, seed: int) -> dict[str, np.ndarray]:
    # its own random stream: the rest of the world draws exactly what it drew before these existed
    rng = np.random.default_rng([seed, 2])
    n = world.price_sensitivity.size
    coupon_share = _sigmoid(1.5 * world.price_sensitivity - 1.0 + rng.normal(0, 0.5, n))
    return {
        "coupon_share": np.round(coupon_share, 3),
        "acquisition_channel": np.array(ACQUISITION_CHANNELS)[rng.integers(0, len(ACQUISITION_CHANNELS), n)],
    }


def write_items(world: World, writer: Writer, seed: int) -> None:
    n = len(world.item_category)
    width = len(str(n))
    # titles and times of day are cosmetic: a side stream keeps them from shifting the main draws
    rng = np.random.default_rng([seed, 2])
    words = np.array(TITLE_WORDS)[rng.integers(0, len(TITLE_WORDS), n)]
    categories = np.array(CATEGORIES)[world.item_category]
    frame = pl.DataFrame(
        {
            "item_id": np.arange(n),
            "title": [
                f"{w} {c.title()} {i % 997}" for w, c, i in zip(words, categories, range(n), strict=True)
            ],
            "category": categories,
            "tags": [
                f"{c},{c}-{g % GENRES_PER_CATEGORY}"
                for c, g in zip(categories, world.item_genre, strict=True)
            ],
            "price_cents": world.item_price_cents,
            "published_at": _timestamps(world.item_published_day, rng.integers(0, 86_400, n), world.start),
            "expires_at": _timestamps(
                np.minimum(world.item_expires_day, 36_500), np.zeros(n, dtype=np.int64), world.start
            ),
            "is_available": rng.random(n) < 0.96,
            "file_day": np.maximum(world.item_published_day, 0),
        }
    ).with_columns(
        _id_expr("i", "item_id", width).alias("item_id"),
        pl.when(pl.lit(world.item_expires_day < 10**6))
        .then(pl.col("expires_at"))
        .otherwise(None)
        .alias("expires_at"),
    )
    writer.write_by_day("items", frame, "file_day", world.start)


def write_consents(world: World, rng: np.random.Generator, writer: Writer) -> pl.DataFrame:
    """Initial choices at sign-up, then a few withdrawals and late grants inside the window."""
    n = len(world.country)
    width = len(str(n))
    frames = []
    final = {}
    for purpose, share in CONSENT_GRANT_SHARE.items():
        granted = rng.random(n) < share
        first_day = np.maximum(world.user_created_day, 0)
        initial_day = world.user_created_day
        change = rng.random(n) < 0.06
        change_day = first_day + (rng.random(n) * (world.days - first_day)).astype(np.int64)
        change = change & (change_day < world.days) & (change_day > initial_day)
        for day, file_day, is_granted, mask in (
            (initial_day, first_day, granted, np.ones(n, dtype=bool)),
            (change_day, change_day, ~granted, change),
        ):
            rows = np.flatnonzero(mask)
            frames.append(
                pl.DataFrame(
                    {
                        "user_id": rows,
                        "purpose": purpose,
                        "is_granted": is_granted[rows],
                        "updated_at": _timestamps(day[rows], rng.integers(0, 86_400, rows.size), world.start),
                        "file_day": file_day[rows],
                    }
                )
            )
        final[purpose] = np.where(change, ~granted, granted)
    frame = pl.concat(frames).with_columns(_id_expr("u", "user_id", width).alias("user_id"))
    writer.write_by_day("consents", frame, "file_day", world.start)
    return pl.DataFrame({"user_index": np.arange(n), **{f"has_{k}": v for k, v in final.items()}})


def _item_weights(world: World, day: int) -> np.ndarray:
    live = (world.item_published_day <= day) & (world.item_expires_day > day)
    age = day - world.item_published_day
    novelty = np.where((age >= 0) & (age < 10), 2.5 - 0.15 * age, 1.0)
    trend = 1.0 + 5.0 * np.exp(-(((day - world.item_trend_peak_day) / 5.0) ** 2))
    return np.where(live, world.item_base_popularity * novelty * trend, 0.0)


def _pick_items(world: World, rng: np.random.Generator, day: int, genres: np.ndarray) -> np.ndarray:
    """For each event's genre, an item of that genre drawn by today's popularity."""
    weights = _item_weights(world, day)
    items = np.empty(genres.size, dtype=np.int64)
    order = np.argsort(world.item_genre, kind="stable")
    bounds = np.searchsorted(world.item_genre[order], np.arange(len(CATEGORIES) * GENRES_PER_CATEGORY + 1))
    for genre in np.unique(genres):
        members = order[bounds[genre] : bounds[genre + 1]]
        slots = np.flatnonzero(genres == genre)
        w = weights[members]
        if members.size == 0 or w.sum() <= 0:
            # nothing live in this genre today: fall back to anything live
            members, w = np.flatnonzero(weights > 0), weights[weights > 0]
        items[slots] = members[rng.choice(members.size, size=slots.size, p=w / w.sum())]
    return items


def _draw_genres(world: World, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    u = rng.random(users.size, dtype=np.float32)
    cdf = world.genre_taste_cdf
    genres = np.empty(users.size, dtype=np.int64)
    for lo in range(0, users.size, 200_000):
        hi = min(lo + 200_000, users.size)
        genres[lo:hi] = (cdf[users[lo:hi]] < u[lo:hi, None]).sum(axis=1)
    return np.minimum(genres, cdf.shape[1] - 1)


def simulate_day(world: World, rng: np.random.Generator, day: int) -> pl.DataFrame:
    """One day's interactions: browsing sessions plus purchases, with their funnel events."""
    weekday = (world.start + timedelta(days=day)).weekday()
    signed_up = world.user_created_day <= day
    sessions = rng.poisson(world.activity * WEEKDAY_FACTOR[weekday] * signed_up)
    users = np.repeat(np.arange(sessions.size), sessions)
    items = _pick_items(world, rng, day, _draw_genres(world, rng, users))
    seconds = rng.integers(0, 86_000, users.size)
    affinity = rng.random(users.size)
    clicked = affinity < 0.35
    carted = clicked & (rng.random(users.size) < 0.15)
    rated = rng.random(users.size) < 0.04
    ratings = np.clip(np.round(rng.normal(3.8, 0.9, users.size)), 1, 5)

    buyers = np.flatnonzero(
        rng.random(world.activity.size) < world.daily_purchase_prob * WEEKDAY_FACTOR[weekday] * signed_up
    )
    bought = _pick_items(world, rng, day, _draw_genres(world, rng, buyers))
    buy_seconds = rng.integers(900, 86_000, buyers.size)
    price = world.item_price_cents[bought].astype(np.float64)

    parts = [
        (users, items, "view", seconds, np.full(users.size, np.nan)),
        (users[clicked], items[clicked], "click", seconds[clicked] + 20, np.full(clicked.sum(), np.nan)),
        (users[carted], items[carted], "add_to_cart", seconds[carted] + 90, np.full(carted.sum(), np.nan)),
        (users[rated], items[rated], "rating", seconds[rated] + 300, ratings[rated]),
        (buyers, bought, "view", buy_seconds - 600, np.full(buyers.size, np.nan)),
        (buyers, bought, "add_to_cart", buy_seconds - 300, np.full(buyers.size, np.nan)),
        (buyers, bought, "purchase", buy_seconds, price),
    ]
    return pl.concat(
        [
            pl.DataFrame(
                {
                    "user_index": u,
                    "item_index": i,
                    "event_type": pl.Series([event] * u.size, dtype=pl.Utf8),
                    "occurred_at": _timestamps(np.full(u.size, day), s, world.start),
                    "value": v,
                }
            )
            for u, i, event, s, v in parts
        ]
    ).with_columns(pl.col("value").fill_nan(None))


def campaign_probabilities(world: World, campaign: Campaign, users: np.ndarray) -> np.ndarray:
    """True conversion probability of each user under each variant (columns), and under no contact."""
    base = -2.2 + 0.6 * _zscore(np.log(world.activity))[users]
    effects = {
        "discount": 0.9 * world.price_sensitivity[users] - 0.1,
        "editorial": 0.8 * world.focus[users] - 0.3 * world.price_sensitivity[users],
        "new_arrivals": 0.7 * _zscore(np.log(world.activity))[users] - 0.2,
        "urgency": 0.6 * world.price_sensitivity[users],
        "social_proof": -0.5 * world.price_sensitivity[users] + 0.1,
    }
    columns = [_sigmoid(base + effects[v]) for v in campaign.variants]
    return np.column_stack([*columns, _sigmoid(base - 0.8)])


def _after(stamps: np.ndarray, rng: np.random.Generator, low_s: int, high_s: int) -> np.ndarray:
    """Each timestamp plus a random delay of low_s to high_s seconds."""
    delay = rng.integers(low_s, high_s, stamps.size).astype("timedelta64[s]")
    return stamps + delay.astype("timedelta64[ms]")


def simulate_campaigns(
    world: World, rng: np.random.Generator, consents: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Past sends with their outcomes; a row is written once its attribution window has closed."""
    n = world.activity.size
    frames, truth = [], []
    for campaign in CAMPAIGNS:
        allowed = consents[f"has_{campaign.consent_purpose}"].to_numpy()
        every_user = np.arange(n)
        probs = campaign_probabilities(world, campaign, every_user)
        best = probs[:, :-1].argmax(axis=1)
        arms = (*campaign.variants, "no_contact")
        truth.append(
            pl.DataFrame(
                {
                    "user_index": np.repeat(every_user, len(arms)),
                    "campaign_id": campaign.campaign_id,
                    "variant_id": np.tile(np.array(arms), n),
                    "conversion_prob": probs.reshape(-1),
                    "is_best_variant": (np.arange(len(arms))[None, :] == best[:, None]).reshape(-1),
                }
            )
        )
        for day in range(0, world.days - ATTRIBUTION_DAYS, campaign.every_days):
            eligible = np.flatnonzero(allowed & (world.user_created_day <= day))
            users = eligible[rng.random(eligible.size) < campaign.reach_share]
            holdout = rng.random(users.size) < HOLDOUT_SHARE
            arm = rng.integers(0, len(campaign.variants), users.size)
            arm = np.where(holdout, len(campaign.variants), arm)
            p_convert = probs[users, arm]
            opened = ~holdout & (rng.random(users.size) < 0.35)
            clicked = opened & (rng.random(users.size) < 0.3)
            converted = rng.random(users.size) < p_convert
            sent = rng.integers(6 * 3600, 20 * 3600, users.size)
            sent_at = _timestamps(np.full(users.size, day), sent, world.start)
            frames.append(
                pl.DataFrame(
                    {
                        "campaign_id": campaign.campaign_id,
                        "variant_id": np.array([*campaign.variants, "holdout"])[arm],
                        "user_index": users,
                        "sent_at": sent_at,
                        "opened_at": _after(sent_at, rng, 60, 36_000),
                        "clicked_at": _after(sent_at, rng, 36_000, 72_000),
                        "converted_at": _after(sent_at, rng, 72_000, 86_400 * ATTRIBUTION_DAYS - 3600),
                        "revenue_cents": np.round(rng.lognormal(8.0, 0.6, users.size)).astype(np.int64),
                        # the allocation's probability of the arm sent: the holdout share, or a variant's
                        # equal part of the rest (what off-policy evaluation weights by)
                        "propensity": np.where(
                            holdout, HOLDOUT_SHARE, (1 - HOLDOUT_SHARE) / len(campaign.variants)
                        ),
                        "file_day": np.full(users.size, day + ATTRIBUTION_DAYS),
                        "_opened": opened,
                        "_clicked": clicked | (converted & ~holdout & (rng.random(users.size) < 0.7)),
                        "_converted": converted,
                    }
                )
            )
    exposures = pl.concat(frames).with_columns(
        pl.when(pl.col("_opened") | pl.col("_clicked")).then(pl.col("opened_at")).alias("opened_at"),
        pl.when(pl.col("_clicked")).then(pl.col("clicked_at")).alias("clicked_at"),
        pl.when(pl.col("_converted")).then(pl.col("converted_at")).alias("converted_at"),
        pl.when(pl.col("_converted")).then(pl.col("revenue_cents")).otherwise(0).alias("revenue_cents"),
    )
    return exposures.drop("_opened", "_clicked", "_converted"), pl.concat(truth)


class GenerateSizeError(ValueError):
    """The requested world is too small to be useful or too large for this machine."""


# The simulated world holds, per user, a few float32 arrays over the genres (tastes, their cumulative
# form while sampling) and a dozen scalars; a day's events are written and dropped. Measured: 200,000 users
# peak at 0.43 GB (1.4 kB a user beyond the interpreter), which this estimate with its 1.5x margin covers.
BYTES_PER_USER_GENRE = 3 * 4
BYTES_PER_USER = 200
BYTES_PER_ITEM = 200


def estimated_bytes(n_users: int, n_items: int) -> int:
    n_genres = len(CATEGORIES) * GENRES_PER_CATEGORY
    return int(
        1.5 * (n_users * (n_genres * BYTES_PER_USER_GENRE + BYTES_PER_USER) + n_items * BYTES_PER_ITEM)
    )


def physical_memory_bytes() -> int | None:
    """The memory this process may use: the machine's, or its container's limit when that is smaller."""
    limits = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means none
            limits.append(int(text))
    return min(limits) if limits else None


def check_fits_in_memory(n_users: int, n_items: int) -> None:
    """Fail in a second with the sizes, not after minutes with numpy's MemoryError."""
    needed, available = estimated_bytes(n_users, n_items), physical_memory_bytes()
    if available is not None and needed > 0.8 * available:
        raise GenerateSizeError(
            f"--users {n_users:,} and --items {n_items:,} need about {needed / 2**30:,.1f} GiB of memory; this "
            f"machine has {available / 2**30:,.1f} GiB (generate at most about "
            f"{int(n_users * 0.8 * available / needed):,} users here)"
        )


def generate(
    out: Path,
    n_users: int,
    n_items: int,
    days: int,
    end: date,
    seed: int,
    fmt: str = "csv",
    plant_bias: bool = False,
) -> dict[str, int]:
    """Write the sources, a ready config and the ground truth under `out`; return row counts. With
    `plant_bias` behaviour depends strongly on gender, so what is learnt from it is biased (a test world
    for the fairness audit)."""
    if n_users < 10 or n_items < 10 or days < 14:
        raise GenerateSizeError("generate needs at least 10 users, 10 items and 14 days")
    check_fits_in_memory(n_users, n_items)
    rng = np.random.default_rng(seed)
    start = end - timedelta(days=days - 1)
    world = build_world(rng, n_users, n_items, start, end, plant_bias)
    writer = Writer(out, fmt)
    user_width, item_width = len(str(n_users)), len(str(n_items))
    write_users(world, writer, seed)
    write_items(world, writer, seed)
    consents = write_consents(world, rng, writer)

    interaction_rows = 0
    for day in range(days):
        frame = simulate_day(world, rng, day).sort("occurred_at", "user_index", "item_index", "event_type")
        frame = frame.with_columns(
            _id_expr("u", "user_index", user_width).alias("user_id"),
            _id_expr("i", "item_index", item_width).alias("item_id"),
        ).select("user_id", "item_id", "event_type", "occurred_at", "value")
        writer.write_day("interactions", start + timedelta(days=day), frame)
        interaction_rows += frame.height

    exposures, variant_truth = simulate_campaigns(world, rng, consents)
    exposures = exposures.with_columns(_id_expr("u", "user_index", user_width).alias("user_id")).select(
        "campaign_id", "variant_id", "user_id", "sent_at", "opened_at", "clicked_at", "converted_at",
        "revenue_cents", "propensity", "file_day",
    )  # fmt: skip
    writer.write_by_day("campaign_exposures", exposures, "file_day", start)

    deletions = write_deletion_requests(world, writer, seed, user_width)
    write_truth(out, world, variant_truth, user_width)
    write_config(out, fmt, seed)
    return {
        "users": n_users,
        "items": n_items,
        "interactions": interaction_rows,
        "campaign_exposures": exposures.height,
        "deletion_requests": deletions,
    }


DELETION_SHARE = 0.001


def write_deletion_requests(world: World, writer: Writer, seed: int, user_width: int) -> int:
    """A few users (one in a thousand, at least one) ask to be erased during the last week. Their events
    stay in the other sources, as a source system would keep sending them: the pipeline must drop them."""
    rng = np.random.default_rng([seed, 3])  # its own stream: the other sources do not change
    n = world.activity.size
    users = np.sort(rng.choice(n, size=max(1, round(n * DELETION_SHARE)), replace=False))
    day = world.days - 1 - rng.integers(0, min(7, world.days), users.size)
    frame = pl.DataFrame(
        {
            "user_index": users,
            "requested_at": _timestamps(day, rng.integers(0, 86_400, users.size), world.start),
            "file_day": day,
        }
    ).with_columns(_id_expr("u", "user_index", user_width).alias("user_id"))
    writer.write_by_day(
        "deletion_requests", frame.select("user_id", "requested_at", "file_day"), "file_day", world.start
    )
    return frame.height


def write_truth(out: Path, world: World, variant_truth: pl.DataFrame, user_width: int) -> None:
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"user_index": np.arange(world.activity.size), "daily_purchase_prob": world.daily_purchase_prob}
    ).with_columns(_id_expr("u", "user_index", user_width).alias("user_id")).drop("user_index").write_parquet(
        truth / "users.parquet"
    )
    variant_truth.with_columns(_id_expr("u", "user_index", user_width).alias("user_id")).drop(
        "user_index"
    ).write_parquet(truth / "campaign_variants.parquet")
    (truth / "README.json").write_text(
        json.dumps(
            {
                "start": world.start.isoformat(),
                "end": world.end.isoformat(),
                "weekday_factor_monday_first": WEEKDAY_FACTOR.tolist(),
                "purchase_model": "P(purchase on day d) = daily_purchase_prob * weekday_factor[weekday(d)]",
                "campaign_variants": "conversion_prob: true P(convert) under each variant and with no contact",
            },
            indent=2,
        )
    )


def window_conversion_probability(daily_prob: np.ndarray, first_day: date, days: int) -> np.ndarray:
    """True P(at least one purchase in [first_day, first_day + days)) under the generator's model."""
    stay = np.ones_like(daily_prob)
    for offset in range(days):
        stay *= 1.0 - daily_prob * WEEKDAY_FACTOR[(first_day + timedelta(days=offset)).weekday()]
    return 1.0 - stay


def generated_config(fmt: str, seed: int) -> dict:
    source = lambda table: {"path": f"sources/{table}/*.{fmt}"}  # noqa: E731
    return {
        "project": "generated",
        "timezone": "UTC",
        "seed": seed,
        "warehouse": {"path": "var/tailor.duckdb", "runs_dir": "var/runs"},
        "sources": {table: source(table) for table in TABLES},
        # private by default, as every config: a copy of this file pointed at real data publishes no real id
        "publish": {"target": "file://published", "published_user_id": "pseudonymous"},
        "item_audiences": {"categories": ["books", "electronics"], "top_n": 100},
        "user_features": {"attributes": dict(GENERATED_ATTRIBUTES)},
    }


# The generated campaigns mirror the demo's: the email picks each user's variant with a conversion
# model, the push nudge learns with Thompson sampling.
_POLICIES = {"weekly_digest": "personalized", "app_nudge": "bandit"}
_ITEM = "{{ items[0].title if items else 'our bestsellers' }}"
_COPY = {
    "discount": ("10% off {{ items[0].category if items else 'everything' }} this week", "Claim 10% off"),
    "editorial": ("Our editors' picks in {{ items[0].category if items else 'new arrivals' }}", "Read the picks"),
    "new_arrivals": ("New in: {{ items | map(attribute='title') | first | default('this week') }}", "See what's new"),
    "urgency": ("Only a few left", "Open"),
    "social_proof": ("Popular in {{ user.country }}", "Open"),
}  # fmt: skip


def generated_campaigns() -> list[dict]:
    return [
        {
            "campaign_id": campaign.campaign_id,
            "channel": campaign.channel,
            "audience": {"consent_purpose": campaign.consent_purpose},
            "holdout_share": HOLDOUT_SHARE,
            "salt": "2026",
            "allocation": {"policy": _POLICIES[campaign.campaign_id]},
            "variants": [
                {
                    "variant_id": variant,
                    "subject": _COPY[variant][0],
                    "headline": f"Picked for you: {_ITEM}",
                    "body": "{% for item in items %}<p>{{ item.title }}: {{ item.reason }}</p>{% endfor %}"
                    if campaign.channel == "email"
                    else f"{_ITEM} is popular right now.",
                    "call_to_action": _COPY[variant][1],
                }
                for variant in campaign.variants
            ],
        }
        for campaign in CAMPAIGNS
    ]


def write_config(out: Path, fmt: str, seed: int) -> None:
    text = "# Written by `tailor generate`: reads the generated sources beside this file.\n"
    text += yaml.safe_dump(generated_config(fmt, seed), sort_keys=False)
    (out / "tailor.yaml").write_text(text)
    campaigns = out / "campaigns"
    campaigns.mkdir(parents=True, exist_ok=True)
    for campaign in generated_campaigns():
        header = "# Written by `tailor generate`.\n"
        body = yaml.safe_dump(campaign, sort_keys=False, allow_unicode=True)
        (campaigns / f"{campaign['campaign_id']}.yaml").write_text(header + body)


def parse_day(value: str) -> date:
    return datetime.strptime(value, "%Y-%m-%d").date()
