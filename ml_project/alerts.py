"""A monitoring run's summary where the team already looks: a webhook (Slack-compatible or plain
JSON) and/or e-mail over SMTP (`monitoring.alerts` in the config).

Secrets come only from the environment: the config names the variables (a webhook URL is a
secret: whoever has it can post). Each send times out and retries, and none fails the run: a
failure is logged as a warning with its reason (never the URL or a password), and the run's
exit code stands.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import time
from email.message import EmailMessage
from functools import partial
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from ml_project.config_sections import AlertsConfig, EmailConfig, WebhookConfig
from ml_project.monitoring_summary import (
    EXIT_DRIFT,
    EXIT_DRIFT_AND_ESTIMATED_DROP,
    EXIT_DRIFT_AND_PERFORMANCE_DROP,
    EXIT_ESTIMATED_DROP,
    EXIT_OK,
    EXIT_PERFORMANCE_DROP,
    EXIT_RETRAINING_FAILED,
)

logger = logging.getLogger(__name__)

VERDICTS = {
    EXIT_OK: "ok",
    EXIT_DRIFT: "DATA DRIFT",
    EXIT_PERFORMANCE_DROP: "PERFORMANCE DROP",
    EXIT_DRIFT_AND_PERFORMANCE_DROP: "DATA DRIFT and PERFORMANCE DROP",
    EXIT_RETRAINING_FAILED: "RETRAINING FAILED",
    EXIT_ESTIMATED_DROP: "ESTIMATED PERFORMANCE DROP",
    EXIT_DRIFT_AND_ESTIMATED_DROP: "DATA DRIFT and ESTIMATED PERFORMANCE DROP",
}
# Server answers worth another attempt: rate limits and a server's passing trouble.
RETRY_STATUSES = (429, 500, 502, 503, 504)


class AlertError(Exception):
    """Why an alert was not sent; the message never holds a secret."""


def send_alerts(summary: Mapping[str, Any], alerts: AlertsConfig) -> dict[str, str]:
    """Send the summary (with its `exit_code`) to every configured channel when the verdict
    calls for it; returns each channel's outcome, "sent" or why not. Never raises."""
    if alerts.send == "on_alert" and summary.get("exit_code", EXIT_OK) == EXIT_OK:
        return {}
    senders: dict[str, Callable[[], None]] = {}
    if alerts.webhook:
        senders["webhook"] = partial(post_webhook, summary, alerts.webhook, alerts)
    if alerts.email:
        senders["email"] = partial(send_email, summary, alerts.email, alerts)
    outcomes: dict[str, str] = {}
    for name, send in senders.items():
        try:
            send()
        except AlertError as err:
            logger.warning("Monitoring alert not sent by %s: %s", name, err)
            outcomes[name] = f"not sent: {err}"
        except Exception as err:  # a bug here must not fail the run; its text may hold the URL
            logger.warning("Monitoring alert not sent by %s: %s (a bug: please report it)", name,
                           type(err).__name__)
            outcomes[name] = f"not sent: {type(err).__name__}"
        else:
            logger.info("Monitoring alert sent by %s", name)
            outcomes[name] = "sent"
    return outcomes


def headline(summary: Mapping[str, Any]) -> str:
    model = summary.get("model") or {}
    code = summary.get("exit_code", EXIT_OK)
    return (f"Monitoring {model.get('name')} version {model.get('version')}: "
            f"{VERDICTS.get(code, f'exit code {code}')}")


def message_text(summary: Mapping[str, Any]) -> str:
    """The summary in a few lines a person reads in a chat or an inbox."""
    window, drift = summary.get("window") or {}, summary.get("drift") or {}
    lines = [headline(summary),
             f"Window: {window.get('requests')} requests logged {window.get('first_logged_at')}"
             f" .. {window.get('last_logged_at')} ({window.get('rejected')} rejected)"]
    if drift:
        drifted = drift.get("drifted_features") or []
        lines.append(f"Drifted features: {len(drifted)} of {len(drift.get('features') or [])} "
                     f"(share {drift.get('drifted_share'):.2f}, threshold "
                     f"{drift.get('threshold'):.2f})" + (f": {', '.join(drifted)}" if drifted
                                                         else ""))
    performance = summary.get("performance")
    if performance:
        metric = performance["metric"]
        production, baseline = performance["production"][metric], performance["baseline"][metric]
        change = performance["relative_drop"]
        lines.append(f"{metric} ({performance['labelled_rows']} labelled): realised in production "
                     f"{number(production)}, estimated on the holdout {number(baseline)}; drop "
                     f"{'n/a' if change is None else f'{change:.1%}'} (threshold "
                     f"{performance['threshold']:.1%})")
    else:
        lines.append("Performance: no verdict (too few labelled predictions)")
    lines.extend(estimate_text(summary.get("estimated_performance")))
    retraining = summary.get("retraining")
    if retraining:
        lines.append(f"Retrained: version {retraining['model_version']} is the "
                     f"{retraining['alias']}")
    reports = summary.get("reports") or {}
    lines.extend(f"Report: {where}" for where in [*reports.get("files", []),
                                                   reports.get("mlflow_artifacts")] if where)
    return "\n".join(lines)


def estimate_text(estimated: Mapping[str, Any] | None) -> list[str]:
    """The primary metric estimated without labels, with its 95% interval, or why not."""
    if not estimated:
        return []
    metric = estimated["metric"]
    value = (estimated.get("estimated") or {}).get(metric)
    if value is None:
        why = (estimated.get("not_estimated") or {}).get(metric, "not estimated")
        return [f"{metric} estimated without labels: {why}"]
    low, high = (estimated.get("interval_95") or {}).get(metric, (None, None))
    change = estimated["relative_drop"]
    return [f"{metric} estimated without labels ({estimated['rows']} predictions): "
            f"{number(value)} (95% {number(low)} .. {number(high)}), holdout "
            f"{number(estimated['baseline'].get(metric))}; drop "
            f"{'n/a' if change is None else f'{change:.1%}'}"]


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def secret(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise AlertError(f"the environment variable {variable} is not set")
    return value


def post_webhook(summary: Mapping[str, Any], webhook: WebhookConfig,
                 alerts: AlertsConfig) -> None:
    """POST the summary: Slack's incoming-webhook `text` (Mattermost's and other
    Slack-compatible endpoints read it too), or the JSON summary itself."""
    url = secret(webhook.url_env)
    payload = {"text": message_text(summary)} if webhook.format == "slack" else dict(summary)
    # urllib3 retries the POST (not retried by default: an alert twice beats none) on a
    # connection error, a timeout or a passing server error, backing off between attempts; a
    # server's Retry-After (uncapped: it could hold the run for an hour) is not waited for.
    retry = Retry(total=alerts.retries, backoff_factor=0.5, status_forcelist=RETRY_STATUSES,
                  allowed_methods=frozenset({"POST"}), respect_retry_after_header=False)
    where = f"{webhook.url_env} (host {urlsplit(url).hostname})"
    hidden, urllib3_log = HideSecret(url), logging.getLogger("urllib3.connectionpool")
    urllib3_log.addFilter(hidden)  # its retry warnings name the URL's path, a secret
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        try:
            response = session.post(url, json=payload, timeout=alerts.timeout_seconds)
            response.raise_for_status()
        # The exceptions' own texts name the URL, a secret: the reason is said without them.
        except requests.exceptions.RetryError:
            raise AlertError(f"{where} answered with an error status {alerts.retries + 1} "
                             "times") from None
        except requests.exceptions.HTTPError as err:
            raise AlertError(f"{where} answered HTTP {err.response.status_code}") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as err:
            raise AlertError(f"{webhook.url_env} is not an http(s) URL ({type(err).__name__})"
                             ) from None
        except requests.exceptions.RequestException as err:
            raise AlertError(f"no answer from {where} within {alerts.timeout_seconds} s in "
                             f"{alerts.retries + 1} attempts ({type(err).__name__})") from None
        finally:
            urllib3_log.removeFilter(hidden)


class HideSecret(logging.Filter):
    """Drops a library's log record that would print the webhook URL's path or query."""

    def __init__(self, url: str) -> None:
        super().__init__()
        parts = urlsplit(url)
        self.secrets = [part for part in (parts.path, parts.query) if len(part) > 1]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(secret in text for secret in self.secrets)


def send_email(summary: Mapping[str, Any], email: EmailConfig, alerts: AlertsConfig) -> None:
    """The summary as the message's text and the JSON summary attached, over SMTP (STARTTLS
    when configured); a passing failure is tried again, a refusal (5xx) is not."""
    login = None
    if email.username_env or email.password_env:
        if not (email.username_env and email.password_env):
            raise AlertError("an SMTP login needs both email.username_env and password_env")
        login = (secret(email.username_env), secret(email.password_env))
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = (headline(summary), email.sender,
                                                          ", ".join(email.to))
    message.set_content(message_text(summary))
    message.add_attachment(json.dumps(summary, indent=2).encode(), maintype="application",
                           subtype="json", filename="monitoring_summary.json")
    for attempt in range(alerts.retries + 1):
        try:
            with smtplib.SMTP(email.host, email.port, timeout=alerts.timeout_seconds) as smtp:
                if email.starttls:
                    smtp.starttls()
                if login:
                    smtp.login(*login)
                smtp.send_message(message)
            return
        except (OSError, smtplib.SMTPException) as err:  # timeouts and refused connections too
            permanent = isinstance(err, smtplib.SMTPNotSupportedError) or (
                isinstance(err, smtplib.SMTPResponseException) and err.smtp_code >= 500)
            if permanent or attempt == alerts.retries:
                raise AlertError(f"SMTP {email.host}:{email.port}: {type(err).__name__}: {err}"
                                 f" (attempt {attempt + 1})") from None
            time.sleep(0.5 * 2**attempt)
