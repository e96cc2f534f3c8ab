"""`tailor`: generate demo data and run the nightly flow."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

# Offline machines: Prefect's telemetry would only log connection errors.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Tailor's own loggers go to the same places as Prefect's: the terminal and the run's logs in the API.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tailor")
# Tailor logs outside flow runs too (the server start, the lock): those lines go to the terminal and the log file
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


# The research copy beside the project, which the issue names as the default. Nothing needs it to install,
# run the nightly flow or pass the tests.
DEFAULT_MOVIELENS_DIR = "../shared/data/ml-100k/"  # optional: its tests skip when it is absent


def _day(value: str) -> date:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):  # fromisoformat also takes 20261130
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date in YYYY-MM-DD form") from None


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive integer")
    return number


def _names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{value!r} names no segment")
    return names


def _run_options(parser: argparse.ArgumentParser, force: bool, presign: bool = True) -> None:
    """The options every command that runs a flow shares."""
    parser.add_argument(
        "--target",
        default=None,
        help="publish here instead of the config's target: file://DIR or s3://BUCKET/PREFIX",
    )
    if force:
        parser.add_argument(
            "--force",
            action="store_true",
            help="rebuild features even when the cache holds this night's build",
        )
    if presign:
        _presign_option(parser)
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing but errors; the exit code says how it went"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


PRESIGN_MAX_SECONDS = 7 * 24 * 3600  # S3's limit for a link signed with SigV4


def _presign_seconds(value: str) -> int:
    seconds = _positive(value)
    if seconds > PRESIGN_MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{value!r}: S3 signs links for at most {PRESIGN_MAX_SECONDS} s (7 days)")
    return seconds


def _presign_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presign",
        type=_presign_seconds,
        default=None,
        metavar="SECONDS",
        help="with an S3 target, also print links to the report and Data Docs that open without credentials "
        "for SECONDS",
    )


class OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line like every other expected failure, with where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tailor: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tailor",
        description="Tailor: the nightly batch that turns customer data into personalized marketing outputs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="write a realistic synthetic data set and a ready config",
        description="Write daily source files DIR/sources/<table>/<YYYY-MM-DD>.<fmt>, a config DIR/tailor.yaml "
        "that reads them, and the simulation's ground truth in DIR/truth/.",
    )
    gen.add_argument("--users", type=_positive, default=20_000, help="number of users (default 20000)")
    gen.add_argument("--items", type=_positive, default=2_000, help="number of items (default 2000)")
    gen.add_argument("--days", type=_positive, default=60, help="days of history (default 60)")
    gen.add_argument(
        "--end", type=_day, default=None, help="last day of data, YYYY-MM-DD (default: yesterday, UTC)"
    )
    gen.add_argument("--seed", type=int, default=42, help="random seed; same seed, same data (default 42)")
    gen.add_argument("--format", choices=("csv", "parquet"), default="csv", help="file format (default csv)")
    gen.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    gen.add_argument(
        "--plant-bias",
        action="store_true",
        help="make behaviour depend on gender, so models and allocation learn a bias the fairness audit flags",
    )

    run = commands.add_parser(
        "run",
        help="run the nightly flow for one date",
        description="Extract, validate, build features, train, score, assign variants and publish.",
    )
    run.add_argument("--config", type=Path, required=True, help="YAML config file, e.g. config/demo.yaml")
    run.add_argument(
        "--run-date",
        type=_day,
        default=None,
        help="the run's date, YYYY-MM-DD; it uses data up to the end of the day before "
        "(default: today in the config's timezone)",
    )
    _run_options(run, force=True)

    back = commands.add_parser(
        "backfill",
        help="rerun the nightly flow for a range of dates, oldest first",
        description="Rerun every date from --start to --end inclusive, in date order, replacing each date's "
        "outputs; latest.json ends on the newest date published. Stops at the first failure.",
    )
    back.add_argument("--config", type=Path, required=True, help="YAML config file, e.g. config/demo.yaml")
    back.add_argument("--start", type=_day, required=True, help="first date, YYYY-MM-DD")
    back.add_argument("--end", type=_day, required=True, help="last date, YYYY-MM-DD")
    _run_options(back, force=True, presign=False)  # a backfill prints each night's folder, no pages

    serve = commands.add_parser(
        "serve",
        help="run the schedules on this machine (nightly on schedule.cron, experiments on demand)",
        description="Serve the deployments of prefect.yaml from this process: the nightly run on schedule.cron in "
        "the config's timezone (with its missed-night policy), backfills and the experiment analysis on demand. "
        "Without PREFECT_API_URL it starts a local Prefect server on 127.0.0.1 first (schedules need one).",
    )
    serve.add_argument("--config", type=Path, required=True, help="YAML config file, e.g. config/demo.yaml")
    serve.add_argument(
        "--port", type=_positive, default=4200, help="port of the local Prefect server (default 4200)"
    )

    exp = commands.add_parser(
        "experiments",
        help="analyse every campaign's experiment and publish the results, without the nightly run",
        description="Extract the newest sends, measure each campaign's variants against its control with the "
        "serving models, and publish experiment_results, uplift_evaluation and the report under experiments/.",
    )
    exp.add_argument("--config", type=Path, required=True, help="YAML config file, e.g. config/demo.yaml")
    exp.add_argument(
        "--run-date", type=_day, default=None, help="the analysis date, YYYY-MM-DD (default: today)"
    )
    _run_options(exp, force=False)

    ev = commands.add_parser(
        "evaluate",
        help="offline evaluation: a company's last days held out, or the MovieLens 100K benchmark",
        description="With --holdout-days: hold out the company's last N days of purchases, run the nightly "
        "pipeline on the rest and measure its recommendations beside popularity, buy-again and buy-again + "
        "popularity, on all purchases and on items never bought before. Without it: the MovieLens 100K "
        "benchmark (the Microsoft Recommenders protocol) beside a popularity baseline.",
    )
    ev.add_argument("--config", type=Path, required=True, help="e.g. examples/online-retail/tailor.yaml")
    ev.add_argument(
        "--holdout-days",
        type=_positive,
        default=None,
        help="evaluate the configured company on its last N days (default: the MovieLens benchmark)",
    )
    ev.add_argument(
        "--protocol",
        choices=("stratified", "temporal"),
        default="stratified",
        help="stratified: per user a seeded random 75/25 split; temporal: per user the newest 25%% held out",
    )
    ev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_MOVIELENS_DIR),
        help=f"folder with u.data, u.user and u.item (default {DEFAULT_MOVIELENS_DIR})",
    )
    ev.add_argument("--out", type=Path, default=None, help="write metrics.json, test.csv and topk.csv here")
    ev.add_argument(
        "--work-dir", type=Path, default=Path("var/evaluate"), help="scratch folder for the warehouse"
    )

    drafts = commands.add_parser(
        "draft-variants",
        help="ask a language model for draft copy and add it to a campaign file as drafts",
        description="Ask the config's drafting endpoint (OpenAI-compatible) for subjects and headlines per "
        "segment, check them against the channel's limits and templates, and append the ones that pass to "
        "the campaign's file with status: draft. A draft is never sent until a person sets status: approved.",
    )
    drafts.add_argument("--config", type=Path, required=True, help="YAML config file, e.g. config/demo.yaml")
    drafts.add_argument("--campaign", required=True, help="campaign_id of a campaign in its own file")
    drafts.add_argument("--brief", required=True, help="what the copy should say, in a sentence or two")
    drafts.add_argument(
        "--segments",
        type=_names,
        default=None,
        help="comma-separated RFM segment names, e.g. loyal,at_risk (default: every segment)",
    )

    init = commands.add_parser(
        "init",
        help="write a new project folder for a company's own data, config, SQL and campaigns",
        description="Write DIR/tailor.yaml (every key explained), DIR/sql/<table>.sql (one mapping per "
        "canonical table, from your files' columns to Tailor's), DIR/campaigns/ with an example campaign and "
        "DIR/data/ with tiny example files, so that `tailor check` runs at once. DIR must be new or empty.",
    )
    init.add_argument("dir", type=Path, metavar="DIR", help="the folder to create (new or empty)")
    init.add_argument(
        "--project", default=None, help="the config's project name (default: from the folder's name)"
    )

    check = commands.add_parser(
        "check",
        help="run the source mappings on the files and list every problem, without a nightly run",
        description="Load every source into a scratch DuckDB (never the configured warehouse) and print per "
        "table its rows, a few rows (personal columns masked) and its event-time range, the dates each stage "
        "of the next run would see, and every problem by file and column. Exit code 0: no problem; 2: problems.",
    )
    check.add_argument("--config", type=Path, required=True, help="YAML config file, e.g. tailor.yaml")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _absolute_target(target: str | None) -> str | None:
    from tailor.config import refuse_climbing_target

    if target:
        refuse_climbing_target(target)  # before resolution, which would hide the '..'
    if target and target.startswith("file://") and not target.startswith("file:///"):
        return "file://" + str(Path(target.removeprefix("file://")).resolve())
    return target


def cmd_generate(args: argparse.Namespace) -> int:
    from tailor.generate import generate

    end = args.end or (datetime.now(UTC).date() - timedelta(days=1))
    started = time.monotonic()
    counts = generate(
        args.out, args.users, args.items, args.days, end, args.seed, args.format, args.plant_bias
    )
    print(f"generated {args.days} days ending {end} in {args.out} ({time.monotonic() - started:.1f}s)")
    for table, rows in counts.items():
        print(f"  {table:<20} {rows:>12,} rows")
    print(f"config: {args.out / 'tailor.yaml'}   ground truth: {args.out / 'truth'}")
    return 0


@contextmanager
def flow_session(
    args: argparse.Namespace, settings: Any, run_date: date | None, command: str, first_date: date | None = None
) -> Iterator[None]:
    """What every command that runs a flow needs, cheapest check first: the run log, the run lock (a refused
    run starts nothing), the sources and the publish target (a wrong path or bucket fails in seconds), then
    the Prefect API (a temporary server when none is configured). Nothing before the API notifies: a run
    refused here never became a flow run. `first_date` is the earliest night the command runs."""
    from tailor.prefect_api import prefect_api
    from tailor.tasks.extract import check_sources_present
    from tailor.tasks.privacy import register_key
    from tailor.tasks.publish import check_publish_target
    from tailor.tasks.runs import run_lock
    from tailor.terminal import attach_run_log, detach_run_log
    from tailor.warehouse import today_in

    register_key(settings)  # every run erases what it is asked to: without the key, say so in a second
    log_file = attach_run_log(settings.resolve(settings.warehouse.runs_dir) / "logs", command)
    args.log_path = log_file.baseFilename
    night = run_date or today_in(settings.timezone)
    try:
        with run_lock(settings, night):
            check_sources_present(settings, first_date or night)
            check_publish_target.fn(settings)  # the function, not the task: a task run needs the API
            with prefect_api():
                yield
    except BaseException:
        # the traceback goes to the log file only: the terminal gets main's one line
        log_file.handle(
            logging.getLogger("tailor").makeRecord("tailor", logging.ERROR, __file__, 0, "%s failed", (command,),
                                                   sys.exc_info())
        )  # fmt: skip
        raise
    finally:
        detach_run_log(log_file)


def cmd_run(args: argparse.Namespace) -> int:
    target, settings = args.checked_target, args.settings  # checked in main, before the heavy imports
    from tailor.progress import show_progress

    started = time.monotonic()
    with flow_session(args, settings, args.run_date, "run"), show_progress(_watched(args)):
        from tailor.flows.nightly import nightly

        summary = nightly(
            config_path=str(args.config.resolve()), run_date=args.run_date, target=target, force=args.force
        )
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["published"]["links"] = people_links(summary["published"], settings, args.presign)
    report(args, summary, format_summary)
    if _watched(args):
        print_summary_table(summary)
    return 0


def _watched(args: argparse.Namespace) -> bool:
    """Someone reads this terminal: progress bars and the closing table are for them, not for scripts."""
    return not (args.quiet or args.json) and sys.stderr.isatty()


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The night at a glance: one row per stage, what it produced."""
    quality, scored = summary["data_quality"], summary["scored"]
    models = summary["models"]
    return [
        ("extract", f"{sum(summary['extracted'].values()):,} rows from {len(summary['extracted'])} sources"),
        ("validate", f"{quality['passed']}/{quality['expectations']} checks passed"),
        (
            "features",
            f"{sum(summary['feature_rows'].values()):,} rows in {len(summary['feature_rows'])} tables",
        ),
        (
            "train",
            ", ".join(
                f"{name} {m['decision'] or 'kept'}"
                + (f" (served by {m['served_by']})" if m.get("served_by") not in (None, "model") else "")
                for name, m in models.items()
                if name in ("propensity", "ranking", "discovery")
            ),
        ),
        (
            "score",
            f"{scored['scored_users']:,} users, {scored['scored_candidates']:,} candidates "
            f"in {scored['shards']} shard(s), {scored['recommendations']:,} recommendations",
        ),
        ("segments", f"{summary['segments']['segments']:,} users"),
        (
            "variants",
            ", ".join(
                f"{name} {sum(info['users_by_arm'].values()):,} users"
                for name, info in summary["campaigns"].items()
            )
            or "no active campaign",
        ),
        ("publish", f"{len(summary['published']['files'])} files to {summary['published']['target']}"),
    ]


def print_summary_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Tailor {summary['run_date']}: {summary['wall_seconds']}s")
    table.add_column("stage", style="bold")
    table.add_column("result")
    for stage, result in summary_rows(summary):
        table.add_row(stage, result)
    Console().print(table)


def report(args: argparse.Namespace, summary: dict[str, Any], as_text: Any) -> None:
    """The command's summary: JSON with --json, nothing with --quiet, else readable text."""
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    elif not args.quiet:
        print(as_text(summary))


def cmd_backfill(args: argparse.Namespace) -> int:
    target, settings = args.checked_target, args.settings
    if args.end < args.start:
        raise UsageError(f"--end {args.end} is before --start {args.start}")
    from tailor.progress import show_progress

    with flow_session(args, settings, args.end, "backfill", args.start), show_progress(_watched(args)):
        from tailor.flows.schedule import backfill

        summary = backfill(
            config_path=str(args.config.resolve()),
            start=args.start,
            end=args.end,
            target=target,
            force=args.force,
        )
    report(args, summary, format_backfill)
    return 0


def format_backfill(summary: dict[str, Any]) -> str:
    return "\n".join(
        f"{day}: {run['published']}" + ("" if run["latest_moved"] else " (latest.json kept on a newer run)")
        for day, run in summary.items()
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from tailor.config import load_settings
    from tailor.serve import serve_schedules

    settings = load_settings(args.config)
    return serve_schedules(settings, args.config.resolve(), args.port)


def cmd_experiments(args: argparse.Namespace) -> int:
    target, settings = args.checked_target, args.settings
    with flow_session(args, settings, args.run_date, "experiments"):
        from tailor.flows.experiments import experiments

        summary = experiments(config_path=str(args.config.resolve()), run_date=args.run_date, target=target)
    summary["published"]["links"] = people_links(summary["published"], settings, args.presign)
    report(
        args,
        summary,
        lambda run: "\n".join(
            [format_experiments(run["experiments"]), *link_lines("report", run["published"]["links"]["report"])]
            if run["published"]["links"]["report"]
            else [format_experiments(run["experiments"])]
        ),
    )
    return 0


def format_experiments(experiments: dict[str, dict[str, Any]]) -> str:
    from tailor.human import p_phrase

    lines = ["experiments (units per arm; significant differences against the control):"]
    for campaign, info in experiments.items():
        trust = (
            "" if info["is_trusted"] else f"  SAMPLE-RATIO MISMATCH ({p_phrase(info['sample_ratio_p_value'])})"
        )
        lines.append(
            f"  {campaign:<20} "
            + ", ".join(f"{arm} {n:,}" for arm, n in info["units_by_arm"].items())
            + trust
        )
        lines.append(f"  {'':<20} significant: {', '.join(info['significant']) or 'none'}")
        for variant, evaluation in info.get("uplift", {}).items():
            lines.append(f"  {'':<20} uplift model {variant}: {uplift_line(evaluation)}")
    return "\n".join(lines)


def uplift_line(evaluation: dict[str, Any]) -> str:
    """One variant's uplift evaluation for the terminal: the learner, Qini, margin over random and the gate."""
    qini = evaluation.get("qini_coefficient")
    if qini is None:
        return "not evaluated (too few units); the best single variant serves"
    margin = evaluation.get("margin_at_target")
    gate = evaluation.get("drives_policy")
    return (
        f"{evaluation.get('learner') or ''} Qini {qini:.4f}".strip()
        + (f", margin over random {margin:+.4f}" if margin is not None else "")
        + ("" if gate is None else ", drives the policy" if gate else ", does not clear random targeting")
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.holdout_days is not None:
        return cmd_evaluate_company(args)
    from tailor.evaluate import evaluate, write_outputs

    if not (args.data_dir / "u.data").exists():
        print(f"tailor: error: no u.data in {args.data_dir} (pass --data-dir)", file=sys.stderr)
        return 2
    started = time.monotonic()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    result = evaluate(args.config, args.protocol, args.data_dir, args.work_dir.resolve())
    print(f"{args.protocol} protocol, {result['users']} test users, {time.monotonic() - started:.0f}s")
    print(f"{'metric':<16}{'tailor':>10}{'popularity':>12}")
    for key in ("map_at_10", "ndcg_at_10", "precision_at_10", "recall_at_10"):
        print(f"{key:<16}{result[key]:>10.4f}{result['baseline'][key]:>12.4f}")
    print(f"candidate recall {result['candidate_recall']:.3f}")
    if args.out:
        write_outputs(result, args.out)
        print(f"wrote {args.out / 'metrics.json'}, test.csv, topk.csv")
    return 0


def cmd_evaluate_company(args: argparse.Namespace) -> int:
    from tailor.holdout import evaluate_company, format_result, write_outputs

    started = time.monotonic()
    result = evaluate_company(args.config, args.holdout_days, args.work_dir.resolve())
    print(format_result(result))
    print(f"({time.monotonic() - started:.0f}s)")
    if args.out:
        write_outputs(result, args.out)
        print(f"wrote {args.out / 'metrics.json'}, test.csv, topk.csv")
    return 0


def cmd_draft_variants(args: argparse.Namespace) -> int:
    from tailor.drafts import draft_variants, format_drafts

    # a DraftError is one of USER_ERRORS: main prints its one line and exits 2
    summary = draft_variants(args.config, args.campaign, args.brief, args.segments)
    print(format_drafts(summary))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from tailor.init import InitError, init_project

    try:
        written = init_project(args.dir, args.project)
    except InitError as error:
        print(f"tailor: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files in {args.dir}:")
    print(*(f"  {path.relative_to(args.dir)}" for path in written), sep="\n")
    print(
        f"next: put your files under {args.dir / 'data'}, adapt {args.dir / 'sql'}/*.sql to their columns, set\n"
        "  TAILOR_PSEUDONYM_KEY in the environment (the secret that pseudonymises published user ids and keys the\n"
        "  deletion register; every run needs it), then\n"
        f"  tailor check --config {args.dir / 'tailor.yaml'}"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from tailor.check import check_project, format_check

    result = check_project(args.config)
    print(json.dumps(result, indent=2, default=str) if args.json else format_check(result))
    # problems in the data are the user's to fix, as a bad config is: the same exit code
    return 0 if result["ok"] else 2


def people_links(published: dict[str, Any], settings: Any, presign_seconds: int | None) -> dict[str, Any]:
    """What a person opens: the report and Data Docs as a local path (a folder target) or as the object's
    page (S3), and with --presign a link that opens without credentials for a while."""
    from tailor.storage import browser_link, presigned_link

    pages = {"report": published.get("report"), **dict(enumerate(published.get("data_docs", [])))}
    links: dict[str, Any] = {"report": None, "data_docs": []}
    for name, uri in pages.items():
        if uri is None:
            continue
        link = {"open": browser_link(uri, settings.storage)}
        if presign_seconds and uri.startswith("s3://"):
            link["presigned"] = presigned_link(uri, settings.storage, presign_seconds)
            link["expires_in_seconds"] = presign_seconds
        if name == "report":
            links["report"] = link
        else:
            links["data_docs"].append(link)
    return links


def link_lines(label: str, link: dict[str, Any]) -> list[str]:
    presigned = (
        [f"  {label} without credentials (for {link['expires_in_seconds']:,} s): {link['presigned']}"]
        if "presigned" in link
        else []
    )
    return [f"{label}: {link['open']}", *presigned]


def checks_by_stage(quality: dict[str, Any]) -> str:
    """The checks per stage in the night's order (the manifest's JSON keeps its keys sorted)."""
    from collections import Counter

    from tailor.tasks.validate import in_pipeline_order

    counts = in_pipeline_order(Counter(quality["checks_by_stage"]))
    return ", ".join(f"{count} on {stage}" for stage, count in counts.items())


def format_summary(summary: dict[str, Any]) -> str:
    published = summary["published"]
    quality = summary["data_quality"]
    propensity = summary["models"]["propensity"]
    ranking = summary["models"]["ranking"]
    pm, rm = propensity["metrics"], ranking["metrics"]
    lines = [
        f"Tailor nightly run {summary['run_date']} finished in {summary['wall_seconds']}s",
        f"published to {published['target']}",
        "",
        "extracted (rows loaded by this run):",
        *(f"  {name:<20} {rows:>12,}" for name, rows in summary["extracted"].items()),
        "",
        f"data quality: {quality['passed']}/{quality['expectations']} checks passed"
        + (f" ({checks_by_stage(quality)})" if quality.get("checks_by_stage") else "")
        + (f", {quality['failed_warning']} warning(s)" if quality["failed_warning"] else "")
        + (
            ", quarantined rows: " + ", ".join(f"{t} {n:,}" for t, n in quarantined.items())
            if (quarantined := {t: n for t, n in quality.get("quarantined_rows", {}).items() if n})
            else ", no row quarantined"
        ),
        *(f"  {failure}" for failure in quality.get("failures", [])[:10]),
        *(
            f"  {line}"
            for link in published.get("links", {}).get("data_docs")
            or [{"open": uri} for uri in published.get("data_docs", [])]
            for line in link_lines("data docs", link)
        ),
        "",
        f"propensity model {propensity['version']}: ROC AUC {pm['roc_auc']:.3f}, PR AUC {pm['pr_auc']:.3f}, "
        f"log loss {pm['log_loss']:.4f} (base rate {pm['baseline']['log_loss']:.4f}), "
        f"{pm['holdout_users']:,} holdout users",
        f"ranking model {ranking['version']}: NDCG@10 {rm['ndcg_at_10']:.3f} "
        f"(best baseline, {rm['baseline'].get('name', 'popularity')}: {rm['baseline']['ndcg_at_10']:.3f}), "
        f"precision@10 {rm['precision_at_10']:.3f}, recall@10 {rm['recall_at_10']:.3f}, "
        f"coverage {rm['catalogue_coverage']:.1%}",
        *(f"WARNING: {warning}" for warning in summary.get("warnings", [])),
        *(f"  {name}: {m['decision']}" for name, m in summary["models"].items() if m.get("decision")),
        "",
        f"segments: {summary['segments']['segments']:,} users, "
        f"{summary['segments']['clustering']['clusters']} behavioural clusters; "
        f"item audiences: {summary['segments']['item_audiences']:,} rows",
        format_experiments(summary["experiments"]),
        "campaigns (users per arm):",
        *(
            f"  {campaign:<20} {info['policy']:<13} "
            + ", ".join(f"{arm} {n:,}" for arm, n in info["users_by_arm"].items())
            for campaign, info in summary["campaigns"].items()
        ),
        "",
        "files:",
        *(f"  {uri}" for uri in published["files"]),
        f"  {published['manifest']}",
        *(
            link_lines("report", published["links"]["report"])
            if published.get("links", {}).get("report")
            else [f"report: {published['report']}"]
        ),
        f"latest.json: {published['latest']}"
        + ("" if published["latest_moved"] else " (kept on a newer run; this was a backfill)"),
        *(
            [f"BI tables (Delta Lake, docs/tables.md): {published['tables']['location']}/<dataset>"]
            if published.get("tables")
            else []
        ),
    ]
    return "\n".join(lines)


class UsageError(ValueError):
    """Arguments that do not fit together."""


FLOW_COMMANDS = ("run", "backfill", "experiments")


def check_config_first(args: argparse.Namespace) -> None:
    """A command that runs a flow reads its config (and --target) before anything else is imported, so a
    mistake there is one line within a second, not after Prefect, LightGBM and GX have loaded."""
    if args.command not in FLOW_COMMANDS:
        return
    from tailor.config import load_settings

    args.checked_target = _absolute_target(args.target)
    overrides = {"publish.target": args.checked_target} if args.checked_target else None
    args.settings = load_settings(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    # a busy host starts even Prefect's own temporary server slowly (for code paths that start one)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

    from tailor.config import ConfigError

    try:
        check_config_first(args)
    except (ConfigError, UsageError) as error:
        return fail(args, error)

    from tailor.errors import USER_ERRORS  # imports every stage's module (Prefect, LightGBM, GX): seconds
    from tailor.terminal import filter_expected_failures, quiet_console

    for name in ("tailor",):
        # Prefect gives these loggers its handlers (PREFECT_LOGGING_EXTRA_LOGGERS), not a level
        logging.getLogger(name).setLevel(logging.INFO)
    expected = (*USER_ERRORS, UsageError)
    if quiet or getattr(args, "json", False):
        quiet_console()  # for schedulers and scripts: the terminal gets the one line of an error, or nothing
    else:
        filter_expected_failures(expected)
    try:
        commands = {
            "generate": cmd_generate,
            "run": cmd_run,
            "experiments": cmd_experiments,
            "backfill": cmd_backfill,
            "serve": cmd_serve,
            "evaluate": cmd_evaluate,
            "draft-variants": cmd_draft_variants,
            "init": cmd_init,
            "check": cmd_check,
        }
        return commands[args.command](args)
    except expected as error:
        return fail(args, error)
    except MemoryError as error:
        return fail(args, error, "the machine ran out of memory (see the sizes the command was given)")


def fail(args: argparse.Namespace, error: BaseException, message: str | None = None) -> int:
    """An expected failure: one line on stderr, a JSON object on stdout with --json, exit code 2."""
    text = " ".join((message or str(error) or type(error).__name__).split())
    log_path = getattr(args, "log_path", None)
    line = f"tailor: error: {text}" + (f" (log: {log_path})" if log_path else "")
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": text, "error_type": type(error).__name__,
                          "log": str(log_path) if log_path else None}))  # fmt: skip
    print(line, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
