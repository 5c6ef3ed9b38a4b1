"""Promote a registered version by hand, or list the registered versions.

The version becomes the champion (or the challenger) whatever its holdout score, its local copy
in <paths.model_artifacts>/<alias>/ and the registry's alias kept consistent
(ml_project/promotion.py).

    pipenv run python executables/promote_model.py --list
    pipenv run python executables/promote_model.py --version N --reason TEXT
        [--alias champion|challenger] [--by NAME] [--config FILE] [--root DIR]

Serving picks a new champion up at its next start. Exit codes: 0 done, 2 refused (nothing was
changed: the message says why), 3 the store failed after the local copy was exported (the next
promotion or modelling run completes it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from ml_project.cli import base_parser, start_run  # noqa: E402
from ml_project.config import Config  # noqa: E402
from ml_project.promotion import (  # noqa: E402
    METADATA_SHA256_TAG,
    PROMOTION,
    Promoted,
    PromotionRefused,
    promote_version,
)
from ml_project.registry import (  # noqa: E402
    CHALLENGER,
    CHAMPION,
    CONTRACT_TAG,
    TrackingError,
    connect,
    contract,
    store_failures,
)

SERVING = ("Serving picks it up at its next start: restart the service (bash "
           "executables/start_prediction_service.sh); a deployed bundle carries its own copy: "
           "rebuild it (bash executables/cloud_setup.sh PROVIDER) and deploy it again.")


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered version as --list shows it."""

    version: str
    aliases: list[str]
    metric: str | None  # its own, from its contract
    holdout_score: str | None
    contract: str  # "same" as the current config's, "other", or "none" recorded
    promotable: bool  # its run logged the local artifact's files
    promoted_by_hand: str


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--version", help="the registered version to promote")
    action.add_argument("--list", action="store_true", help="list the registered versions")
    parser.add_argument("--alias", choices=[CHAMPION, CHALLENGER], default=CHAMPION)
    parser.add_argument("--reason", help="why (recorded with the promotion; required with "
                                         "--version)")
    parser.add_argument("--by", help="who promotes (default: user@host)")
    args = parser.parse_args(argv)
    if args.version is not None and not (args.reason or "").strip():
        parser.error("--version needs --reason: it is recorded with the promotion")
    config, _ = start_run(parser, args, "modelling", "historic", "local", "promotion")
    if args.list:
        try:
            versions = registered_versions(config)
        except TrackingError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(versions_table(config, versions))
        return 0
    try:
        promoted = promote_version(config, args.version, alias=args.alias, reason=args.reason,
                                   by=args.by)
    except PromotionRefused as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    except TrackingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(report(promoted))
    return 0


def report(promoted: Promoted) -> str:
    """What moved, from which version to which, and what serving must do."""
    lines = [f"{promoted.model_name}@{promoted.alias}: version {promoted.previous or '(none)'} "
             f"-> version {promoted.version}, promoted by hand",
             f"  local copy: {promoted.artifact} (sha256 {promoted.sha256[:12]}..., the "
             "version's artifact_sha256)"]
    if promoted.previous is not None and promoted.alias == CHAMPION:
        lines.append(f"  version {promoted.previous} keeps no alias (promote it back with "
                     f"--version {promoted.previous})")
    if promoted.dropped_challenger:
        lines.append(f"  version {promoted.version} was the challenger: that alias and the "
                     f"local {CHALLENGER} folder are gone")
    if promoted.alias == CHAMPION:
        lines.append(f"  {SERVING}")
    return "\n".join(lines)


def registered_versions(config: Config) -> list[RegisteredVersion]:
    """Every registered version of the config's model, newest first.

    Raises:
        TrackingError: the store is unreachable or failed.
    """
    connect(config)
    name = config.tracking.registered_model_name
    quote = '"' if "'" in name else "'"
    found: list[ModelVersion] = []
    with store_failures(config, "while listing the registered versions"):
        client = MlflowClient(config.tracking_uri)
        token = None
        while True:
            page = client.search_model_versions(f"name = {quote}{name}{quote}", page_token=token)
            found.extend(page)
            token = page.token
            if not token:
                break
        aliases = client.get_registered_model(name).aliases if found else {}
    listed = []
    for registered in sorted(found, key=lambda entry: -int(entry.version)):
        tags = registered.tags
        recorded = tags.get(CONTRACT_TAG)
        metric = str(json.loads(recorded)["metric"]) if recorded else None
        hand = json.loads(tags[PROMOTION]) if PROMOTION in tags else None
        listed.append(RegisteredVersion(
            str(registered.version),
            sorted(alias for alias, number in aliases.items()
                   if str(number) == str(registered.version)),
            metric, tags.get(f"holdout_{metric}"),
            "none" if recorded is None else "same" if recorded == contract(config) else "other",
            METADATA_SHA256_TAG in tags,
            f"{hand['alias']} by {hand['by']} at {hand['at']}: {hand['reason']}" if hand else ""))
    return listed


def versions_table(config: Config, versions: list[RegisteredVersion]) -> str:
    """The versions as a plain-text table, the columns a promotion's refusals are about."""
    if not versions:
        return f"{config.tracking.registered_model_name} has no registered version yet"
    rows = [("version", "aliases", "holdout score", "contract", "promotable", "promoted by hand")]
    for entry in versions:
        score = f"{entry.metric} {float(entry.holdout_score):.4f}" if (
            entry.metric and entry.holdout_score is not None) else "-"
        rows.append((entry.version, ",".join(entry.aliases) or "-", score, entry.contract,
                     "yes" if entry.promotable else "no (retrain)",
                     entry.promoted_by_hand or "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  "
                     + row[-1] for row in rows)


if __name__ == "__main__":
    sys.exit(main())
