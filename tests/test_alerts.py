"""Alerts against real local receivers: an HTTP server that records the POSTs it gets (and can
fail, or never answer), an SMTP server on a socket that records the messages, and the
monitoring use case end to end with a webhook configured."""

from __future__ import annotations

import base64
import json
import logging
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from ml_project.alerts import message_text, send_alerts
from ml_project.config import PROJECT_ROOT, ConfigError, _merge
from ml_project.config_sections import AlertsConfig
from ml_project.monitoring_summary import EXIT_DRIFT, EXIT_ESTIMATED_DROP, EXIT_OK
from tests.conftest import prediction_config

SUMMARY: dict[str, Any] = {
    "model": {"name": "churn_model", "version": "3", "mlflow_run_id": "abc"},
    "window": {"requests": 300, "predicted": 290, "rejected": 10,
               "first_logged_at": "2026-12-01T00:00:00+00:00",
               "last_logged_at": "2026-12-02T00:00:00+00:00"},
    "drift": {"detected": True, "drifted_share": 0.5, "threshold": 0.3,
              "drifted_features": ["tenure_months", "contract"], "features": [{}] * 4},
    "performance": {"metric": "roc_auc", "degraded": False, "relative_drop": -0.02,
                    "threshold": 0.05, "labelled_rows": 290, "production": {"roc_auc": 0.79},
                    "baseline": {"roc_auc": 0.77}},
    "exit_code": EXIT_DRIFT,
    "retraining": None,
    "reports": {"files": ["/srv/output/monitoring/drift_report.html"],
                "mlflow_artifacts": "runs:/abc/monitoring/20261202-000000"},
}
WEBHOOK_ENV = "TEST_ALERTS_WEBHOOK_URL"


@dataclass
class HttpReceiver:
    """Answers each POST with the next of `statuses` (the last one repeats), or, with `hang`,
    holds the request until the test ends."""

    statuses: list[int] = field(default_factory=lambda: [200])
    hang: bool = False
    retry_after: str | None = None  # the Retry-After header of an error answer
    posts: list[tuple[str, Any]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    state = HttpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.posts.append((self.path, json.loads(body)))
            if state.hang:
                state.released.wait(30)
                return
            status = state.statuses[min(len(state.posts), len(state.statuses)) - 1]
            self.send_response(status)
            if status >= 400 and state.retry_after:
                self.send_header("Retry-After", state.retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/secret-token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.released.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


@dataclass
class SmtpReceiver:
    port: int = 0
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    envelopes: list[list[str]] = field(default_factory=list)
    greetings: list[str] = field(default_factory=list)  # one a connection, then "220 ready"
    connections: int = 0


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, QUIT."""
    state = SmtpReceiver()

    class Handler(socketserver.StreamRequestHandler):
        def reply(self, line: str) -> None:
            self.wfile.write(f"{line}\r\n".encode())

        def handle(self) -> None:
            state.connections += 1
            greeting = state.greetings.pop(0) if state.greetings else "220 ready"
            self.reply(greeting)
            if not greeting.startswith("220"):
                return
            recipients: list[str] = []
            while line := self.rfile.readline().decode().rstrip("\r\n"):
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    self.reply("250-test\r\n250 AUTH PLAIN")
                elif verb == "AUTH":
                    state.logins.append(base64.b64decode(line.split()[2]).decode())
                    self.reply("235 ok")
                elif verb == "RCPT":
                    recipients.append(line.split(":", 1)[1].strip("<> "))
                    self.reply("250 ok")
                elif verb == "DATA":
                    self.reply("354 go on")
                    data = b"".join(iter(self.rfile.readline, b".\r\n"))
                    message = BytesParser(policy=policy.default).parsebytes(data)
                    assert isinstance(message, EmailMessage)
                    state.messages.append(message)
                    state.envelopes.append(recipients)
                    self.reply("250 queued")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("250 ok")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(10)


def alerts(**values: Any) -> AlertsConfig:
    return AlertsConfig.model_validate({"timeout_seconds": 1, "retries": 2, **values})


def test_slack_payload_is_the_summary_in_text(receiver: HttpReceiver,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    outcomes = send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV}))

    assert outcomes == {"webhook": "sent"}
    [(path, payload)] = receiver.posts
    assert path == "/services/T000/B000/secret-token"
    assert set(payload) == {"text"} and payload["text"] == message_text(SUMMARY)
    text = payload["text"]
    assert text.startswith("Monitoring churn_model version 3: DATA DRIFT")
    assert "tenure_months, contract" in text
    assert "realised in production 0.7900, estimated on the holdout 0.7700" in text
    assert "/srv/output/monitoring/drift_report.html" in text
    assert "runs:/abc/monitoring/20261202-000000" in text


def test_the_text_carries_the_estimated_metric_beside_the_realised(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimated = {"metric": "roc_auc", "rows": 290, "relative_drop": 0.09,
                 "estimated": {"roc_auc": 0.7}, "interval_95": {"roc_auc": [0.66, 0.74]},
                 "baseline": {"roc_auc": 0.77}, "not_estimated": {}}
    summary = {**SUMMARY, "performance": None, "estimated_performance": estimated,
               "exit_code": EXIT_ESTIMATED_DROP}
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)

    assert send_alerts(summary, alerts(webhook={"url_env": WEBHOOK_ENV})) == {"webhook": "sent"}

    text = receiver.posts[0][1]["text"]
    assert text.startswith("Monitoring churn_model version 3: ESTIMATED PERFORMANCE DROP")
    assert ("roc_auc estimated without labels (290 predictions): 0.7000 (95% 0.6600 .. "
            "0.7400), holdout 0.7700; drop 9.0%") in text
    both = message_text({**SUMMARY, "estimated_performance": estimated})
    assert "realised in production 0.7900" in both and "estimated without labels" in both
    regression = {**estimated, "estimated": {}, "not_estimated": {"roc_auc": "not estimated: x"}}
    assert "roc_auc estimated without labels: not estimated: x" in message_text(
        {**SUMMARY, "estimated_performance": regression})


def test_json_payload_is_the_summary_itself(receiver: HttpReceiver,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV, "format": "json"}))

    assert [payload for _, payload in receiver.posts] == [SUMMARY]


def test_a_server_error_is_retried(receiver: HttpReceiver,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.statuses = [500, 200]
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)

    assert send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV})) == {"webhook": "sent"}
    assert len(receiver.posts) == 2


def test_a_long_retry_after_does_not_hold_the_run(receiver: HttpReceiver,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.statuses, receiver.retry_after = [429, 200], "3600"
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    started = time.perf_counter()

    assert send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV})) == {"webhook": "sent"}
    assert time.perf_counter() - started < 5 and len(receiver.posts) == 2


@pytest.mark.parametrize("statuses, reason", [
    ([503], "answered with an error status 3 times"),  # retried, then given up
    ([404], "answered HTTP 404"),  # a wrong URL is not tried again
])
def test_a_failing_server_is_a_warning_without_the_url(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    statuses: list[int], reason: str,
) -> None:
    receiver.statuses = statuses
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    with caplog.at_level(logging.WARNING):
        outcomes = send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV}))

    assert reason in outcomes["webhook"] and reason in caplog.text
    assert len(receiver.posts) == (3 if statuses == [503] else 1)
    assert "secret-token" not in caplog.text and "secret-token" not in outcomes["webhook"]


def test_a_server_that_never_answers_times_out(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.hang = True
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        outcomes = send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV},
                                               timeout_seconds=0.3, retries=1))

    assert time.perf_counter() - started < 5
    assert "no answer from TEST_ALERTS_WEBHOOK_URL (host 127.0.0.1) within 0.3 s in 2 " \
           "attempts" in outcomes["webhook"]
    assert len(receiver.posts) == 2  # the read timeout was retried once
    assert "secret-token" not in caplog.text


def test_a_missing_variable_or_a_url_without_scheme_is_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    with caplog.at_level(logging.WARNING):
        outcomes = send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV}))
    assert outcomes == {"webhook": f"not sent: the environment variable {WEBHOOK_ENV} is not set"}
    assert WEBHOOK_ENV in caplog.text

    monkeypatch.setenv(WEBHOOK_ENV, "hooks.example.com/services/secret-token")
    outcomes = send_alerts(SUMMARY, alerts(webhook={"url_env": WEBHOOK_ENV}))
    assert outcomes == {"webhook": f"not sent: {WEBHOOK_ENV} is not an http(s) URL (MissingSchema)"}
    assert "secret-token" not in caplog.text


def test_only_an_alert_is_sent_unless_always(receiver: HttpReceiver,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    quiet = {**SUMMARY, "exit_code": EXIT_OK}
    assert send_alerts(quiet, alerts(webhook={"url_env": WEBHOOK_ENV})) == {}
    assert receiver.posts == []
    assert send_alerts(quiet, alerts(webhook={"url_env": WEBHOOK_ENV}, send="always")) == {
        "webhook": "sent"}
    assert receiver.posts[0][1]["text"].startswith("Monitoring churn_model version 3: ok")


def test_email_carries_the_text_and_the_json_summary(
    smtp_receiver: SmtpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_SMTP_USER", "monitor")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "pa55")
    settings = alerts(email={"host": "127.0.0.1", "port": smtp_receiver.port, "starttls": False,
                             "sender": "ml@example.com", "to": ["a@example.com", "b@example.com"],
                             "username_env": "TEST_SMTP_USER",
                             "password_env": "TEST_SMTP_PASSWORD"})

    assert send_alerts(SUMMARY, settings) == {"email": "sent"}
    [message] = smtp_receiver.messages
    assert smtp_receiver.logins == ["\0monitor\0pa55"]
    assert smtp_receiver.envelopes == [["a@example.com", "b@example.com"]]
    assert message["Subject"] == "Monitoring churn_model version 3: DATA DRIFT"
    assert message["To"] == "a@example.com, b@example.com"
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().splitlines() == message_text(SUMMARY).splitlines()
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == "monitoring_summary.json"
    assert json.loads(attachment.get_content()) == SUMMARY


def test_an_email_that_cannot_be_sent_is_a_warning(
    smtp_receiver: SmtpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    refused = {"host": "127.0.0.1", "port": smtp_receiver.port, "sender": "ml@example.com",
               "to": ["a@example.com"]}  # starttls by default: this server offers none
    with caplog.at_level(logging.WARNING):
        outcomes = send_alerts(SUMMARY, alerts(email=refused))
    assert "SMTPNotSupportedError" in outcomes["email"] and "(attempt 1)" in outcomes["email"]
    assert smtp_receiver.messages == []
    assert "Monitoring alert not sent by email" in caplog.text


@pytest.mark.parametrize("greeting, connections, outcome", [
    ("421 too busy, try later", 2, "sent"),  # passing: tried again
    ("554 no service for you", 1, "not sent: SMTP 127.0.0.1"),  # a refusal: final
])
def test_a_busy_smtp_server_is_tried_again_a_refusal_is_not(
    smtp_receiver: SmtpReceiver, greeting: str, connections: int, outcome: str
) -> None:
    smtp_receiver.greetings = [greeting]
    settings = alerts(email={"host": "127.0.0.1", "port": smtp_receiver.port, "starttls": False,
                             "sender": "ml@example.com", "to": ["a@example.com"]})

    assert send_alerts(SUMMARY, settings)["email"].startswith(outcome)
    assert smtp_receiver.connections == connections
    assert len(smtp_receiver.messages) == (outcome == "sent")


def test_alerts_are_optional_and_secrets_are_not_config_values(project: Path) -> None:
    config = prediction_config(project)
    assert config.monitoring.alerts == AlertsConfig()  # existing files load unchanged
    with pytest.raises(ConfigError, match="url"):
        prediction_config(project, monitoring={"alerts": {"webhook": {
            "url": "https://hooks.slack.com/services/x"}}})


def test_the_documented_example_is_a_valid_config() -> None:
    """documentation/monitoring.md's alerts example, read as YAML reads it (where a bare `on:`
    key would be the boolean True)."""
    text = (PROJECT_ROOT / "documentation" / "monitoring.md").read_text()
    example = text.split("## Alerts", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    settings = AlertsConfig.model_validate(yaml.safe_load(example)["monitoring"]["alerts"])
    assert settings.webhook is not None and settings.email is not None
    assert settings.webhook.url_env == "ML_PROJECT_ALERTS_WEBHOOK_URL"


@pytest.mark.slow
def test_monitoring_run_sends_its_summary_and_keeps_its_exit_code(
    trained_project: Path, tmp_path: Path, receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_monitoring_production_data_local import (
        log_production_stream,
        read_summary,
        run_monitoring,
        write_production,
    )

    hooks = {"send": "always", "timeout_seconds": 1, "retries": 1,
             "webhook": {"url_env": WEBHOOK_ENV, "format": "json"}}
    content = yaml.safe_load((trained_project / "project_config.yaml").read_text())
    overrides = {
        "data": {"historic": str(trained_project / "data" / "historic_data.csv"),
                 "production": str(tmp_path / "data" / "production_data.csv"),
                 "production_labels": str(tmp_path / "data" / "production_labels.csv")},
        "paths": {"model_artifacts": str(trained_project / "data" / "model_artifacts")},
        "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "monitoring": {"alerts": hooks},
    }
    (tmp_path / "project_config.yaml").write_text(yaml.safe_dump(_merge(content, overrides),
                                                                         sort_keys=False))
    write_production(tmp_path / "data", drift=0.6)
    log_production_stream(prediction_config(tmp_path))
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)

    code = run_monitoring(tmp_path)

    [(_, payload)] = receiver.posts
    assert code == payload["exit_code"] == read_summary(tmp_path)["exit_code"] == EXIT_DRIFT
    assert {key: value for key, value in payload.items() if key != "reports"} == \
        read_summary(tmp_path)
    assert Path(payload["reports"]["files"][0]).is_file()

    receiver.hang = True  # the receiver stops answering: the run's verdict is unchanged
    assert run_monitoring(tmp_path) == EXIT_DRIFT
    assert len(receiver.posts) == 3
