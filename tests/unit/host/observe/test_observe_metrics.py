"""Metrics: what a Prometheus server scraping ebbd would read."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Mapping, Tuple

import pytest
from ebb.host.observe import build_observability
from ebb.host.observe import metrics as metrics_module
from ebb.host.observe.metrics import EbbMetrics, MetricsListenError, parse_listen
from prometheus_client.parser import text_string_to_metric_families

SAMPLE_STATUS = Path(__file__).with_name("status_sample.json")

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def _status() -> Dict[str, Any]:
    return json.loads(SAMPLE_STATUS.read_text())


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _tick(duration_ms: float, decisions: Any = (), policy_error: Any = None) -> Mapping[str, Any]:
    """A tick record whose decisions with a target were applied (as ebbd's trace has them)."""
    applied = [{"vm": d["vm"], "outcome": "applied", "target_kib": d.get("target_kib", 1),
                "kind": d["kind"], "rule": d["rule"]}
               for d in decisions if d.get("target_kib", 1) is not None]
    applied.append({"controller": "ksm", "knob": "run", "outcome": "applied", "value": 1})
    return {"tick": 1, "duration_ms": duration_ms, "decisions": list(decisions),
            "applied": applied, "policy_error": policy_error}


def test_host_and_vm_gauges_come_from_the_status_in_bytes() -> None:
    samples = _samples(EbbMetrics(_status).text())
    assert samples[("ebb_host_memory_total_bytes", ())] == 25165824 * 1024
    assert samples[("ebb_host_memory_freeable_bytes", ())] == 4194304 * 1024
    assert samples[("ebb_host_ksm_pages_sharing", ())] == 40960
    assert samples[("ebb_host_ksm_sleep_seconds", ())] == pytest.approx(0.010)
    assert samples[("ebb_host_memory_pressure_some_avg10", ())] == 1.25
    vm2 = (("vm", "vm2"),)
    assert samples[("ebb_vm_balloon_current_bytes", vm2)] == 1048576 * 1024
    assert samples[("ebb_vm_need_bytes", vm2)] == 204800 * 1024
    assert samples[("ebb_vm_agent_connected", vm2)] == 1
    assert samples[("ebb_vm_report_age_seconds", vm2)] == 1.1
    assert samples[("ebb_vm_guest_protocol_errors_total", vm2)] == 2
    assert samples[("ebb_vm_cooperation", (("state", "ok"), ("vm", "vm2")))] == 1
    assert samples[("ebb_vm_cooperation", (("state", "stuck"), ("vm", "vm2")))] == 0
    legacy = (("vm", "legacy"),)
    assert samples[("ebb_vm_agent_connected", legacy)] == 0
    # Unknown values (no agent: no offer) are absent, not zero.
    assert ("ebb_vm_offer_bytes", legacy) not in samples
    assert samples[("ebb_daemon_dry_run", ())] == 1
    assert samples[("ebb_vm_free_page_reporting", vm2)] == 1
    assert samples[("ebb_vm_free_page_reporting", legacy)] == 0
    assert samples[("ebb_vm_autodeflate", vm2)] == 1
    assert samples[("ebb_vm_rss_bytes", vm2)] == 1000000 * 1024
    assert ("ebb_vm_rss_bytes", legacy) not in samples


def test_a_vm_that_goes_away_disappears_from_the_next_scrape() -> None:
    status = _status()
    metrics = EbbMetrics(lambda: status)
    assert ("ebb_vm_balloon_max_bytes", (("vm", "legacy"),)) in _samples(metrics.text())
    status["vms"] = [vm for vm in status["vms"] if vm["name"] != "legacy"]
    assert ("ebb_vm_balloon_max_bytes", (("vm", "legacy"),)) not in _samples(metrics.text())


def test_ticks_count_actions_by_kind_and_rule_errors_and_durations() -> None:
    metrics = EbbMetrics()
    metrics.on_tick(_tick(3.0, [
        {"vm": "a", "kind": "inflate", "rule": "cooperative-offer"},
        {"vm": "b", "kind": "hold", "rule": "needy", "target_kib": None},
    ]))
    metrics.on_tick(_tick(40.0, [{"vm": "a", "kind": "inflate", "rule": "cooperative-offer"},
                                 {"vm": "b", "kind": "deflate", "rule": "need"}]))
    metrics.on_tick(_tick(2.0, policy_error="policy.d/10-x.policy:3:4: unknown function"))
    samples = _samples(metrics.text())
    assert samples[("ebb_ticks_total", ())] == 3
    assert samples[("ebb_actions_total", (("kind", "inflate"), ("rule", "cooperative-offer")))] == 2
    assert samples[("ebb_actions_total", (("kind", "deflate"), ("rule", "need")))] == 1
    # A hold that sets nothing is a decision, not an action.
    assert samples[("ebb_decisions_total", (("kind", "hold"), ("rule", "needy")))] == 1
    inflate = (("kind", "inflate"), ("rule", "cooperative-offer"))
    assert samples[("ebb_decisions_total", inflate)] == 2
    assert not any(name == "ebb_actions_total" and ("kind", "hold") in labels
                   for name, labels in samples)
    # KSM writes are not balloon actions.
    assert not any(name == "ebb_actions_total" and ("kind", "unknown") in labels
                   for name, labels in samples)
    assert samples[("ebb_policy_errors_total", ())] == 1
    assert samples[("ebb_tick_duration_seconds_count", ())] == 3
    assert samples[("ebb_tick_duration_seconds_bucket", (("le", "0.005"),))] == 2
    assert samples[("ebb_tick_duration_seconds_sum", ())] == pytest.approx(0.045)


def test_a_failing_status_source_still_gives_the_counters() -> None:
    def broken() -> Mapping[str, Any]:
        raise RuntimeError("engine not started")

    metrics = EbbMetrics(broken)
    metrics.on_tick(_tick(1.0))
    samples = _samples(metrics.text())
    assert samples[("ebb_ticks_total", ())] == 1
    assert not any(name.startswith("ebb_host_") for name, _ in samples)


def test_registries_are_private_to_each_instance() -> None:
    first, second = EbbMetrics(), EbbMetrics()
    first.on_tick(_tick(1.0))
    assert _samples(second.text())[("ebb_ticks_total", ())] == 0


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9677", ("127.0.0.1", 9677)), ("[::1]:9100", ("::1", 9100)),
     ("localhost:9677", ("127.0.0.1", 9677))],
)
def test_loopback_listen_addresses_are_accepted(listen: str, expected: Tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:9677", "192.168.1.4:9677", "[::]:9677"])
def test_non_loopback_listen_needs_allow_remote(listen: str) -> None:
    with pytest.raises(MetricsListenError, match="allow_remote"):
        parse_listen(listen)
    assert parse_listen(listen, allow_remote=True)[1] == 9677


@pytest.mark.parametrize("listen", ["9677", "127.0.0.1:", "127.0.0.1:99999", "myhost:9677"])
def test_malformed_listen_is_refused_with_the_key_named(listen: str) -> None:
    with pytest.raises(MetricsListenError, match=r"metrics\.listen"):
        parse_listen(listen)


def _config(trace_path: str = "", listen: str = "", per_vm: bool = False) -> Any:
    return SimpleNamespace(
        trace=SimpleNamespace(path=trace_path, max_bytes=1 << 20, keep_files=2),
        metrics=SimpleNamespace(listen=listen, per_vm=per_vm),
    )


@pytest.mark.parametrize("per_vm", [False, True])
def test_http_endpoint_serves_per_vm_series_only_when_configured(per_vm: bool) -> None:
    # Any local user can read a loopback port; the control socket is group ebb's.
    observability = build_observability(_config(listen="127.0.0.1:0", per_vm=per_vm),
                                        status_source=_status)
    observability.start()
    try:
        for observer in observability.observers:
            observer.on_tick(_tick(2.0, [{"vm": "vm2", "kind": "deflate", "rule": "need"}]))
        assert observability.server is not None
        url = f"http://{observability.server.url_host()}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    finally:
        observability.stop()
    samples = _samples(body)
    assert samples[("ebb_actions_total", (("kind", "deflate"), ("rule", "need")))] == 1
    assert samples[("ebb_host_memory_total_bytes", ())] > 0
    vm_series = {key for key in samples if "vm2" in str(key)}
    if per_vm:
        assert samples[("ebb_vm_balloon_max_bytes", (("vm", "vm2"),))] == 1048576 * 1024
    else:
        assert vm_series == set()
    # The control socket's "metrics" (mode 0660, group ebb) always has every VM.
    socket_samples = _samples(observability.metrics_text())
    assert socket_samples.keys() >= {("ebb_ticks_total", ())}
    assert socket_samples[("ebb_vm_balloon_max_bytes", (("vm", "vm2"),))] == 1048576 * 1024


def test_a_dying_http_server_thread_is_logged_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # ebbd stops when a service thread dies (on_crash) rather than run on with a
    # metrics endpoint that silently went away.
    def broken(self: Any, poll_interval: float = 0.5) -> None:
        raise OSError(9, "Bad file descriptor")

    monkeypatch.setattr(metrics_module._HTTPServer, "serve_forever", broken)
    crashed = threading.Event()
    errors = []

    def on_crash(err: BaseException) -> None:
        errors.append(err)
        crashed.set()

    observability = build_observability(_config(listen="127.0.0.1:0"), status_source=_status)
    with caplog.at_level(logging.ERROR, logger="ebb.host.observe.metrics"):
        observability.start(on_crash=on_crash)
        try:
            assert crashed.wait(30), "the metrics thread's death was not reported"
        finally:
            observability.stop()
    assert isinstance(errors[0], OSError)
    assert "metrics HTTP server thread died" in caplog.text


def test_a_scrape_is_not_printed_on_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    observability = build_observability(_config(listen="127.0.0.1:0"), status_source=_status)
    observability.start()
    try:
        assert observability.server is not None
        url = f"http://{observability.server.url_host()}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
    finally:
        observability.stop()
    assert "GET /metrics" not in capfd.readouterr().err


def test_trace_is_an_observer_only_when_configured(tmp_path: Path) -> None:
    assert build_observability(_config()).trace is None
    observability = build_observability(_config(trace_path=str(tmp_path / "t.jsonl")))
    assert observability.trace in observability.observers
    for observer in observability.observers:
        observer.on_tick(_tick(1.0))
    observability.stop()
    assert (tmp_path / "t.jsonl").read_text().count("\n") == 1


def test_every_metric_is_documented() -> None:
    """docs/observability.md lists every metric ebbd exposes, by its exposed name."""
    docs = (Path(__file__).resolve().parents[4] / "docs" / "observability.md").read_text()
    metrics = EbbMetrics(_status)
    metrics.on_tick(_tick(1.0, [{"vm": "vm2", "kind": "deflate", "rule": "need"}], "x:1:1: e"))
    names = set()
    for family in text_string_to_metric_families(metrics.text()):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            for suffix in ("_bucket", "_sum", "_count"):
                if family.type == "histogram" and sample.name.endswith(suffix):
                    break
            else:
                names.add(sample.name)
    names.add("ebb_tick_duration_seconds")
    undocumented = sorted(name for name in names if f"`{name}`" not in docs)
    assert undocumented == []
    assert len(names) > 35


def test_allow_remote_in_the_config_file_opens_a_non_loopback_listen() -> None:
    from ebb.host.config import config_from_dict

    refused = config_from_dict({"metrics": {"listen": "0.0.0.0:9677"}})
    assert refused.metrics.allow_remote is False
    with pytest.raises(MetricsListenError, match="allow_remote"):
        build_observability(refused)
    allowed = config_from_dict({"metrics": {"listen": "0.0.0.0:9677", "allow_remote": True}})
    server = build_observability(allowed).server
    assert server is not None and (server.address, server.port) == ("0.0.0.0", 9677)


def test_yields_are_counted_by_outcome_with_what_came_back() -> None:
    metrics = EbbMetrics(_status)

    def result(outcome: str, returned_kib: int) -> Dict[str, Any]:
        return {"vm": "vm2", "kind": "yield-result", "outcome": outcome,
                "inputs": {"returned_kib": returned_kib}}

    tick = dict(_tick(1.0))
    tick["yields"] = [{"vm": "vm2", "kind": "yield-request", "outcome": "sent"},
                      result("returned", 81920), result("nothing", 0)]
    metrics.on_tick(tick)
    tick["yields"] = [result("returned", 20480)]
    metrics.on_tick(tick)
    samples = _samples(metrics.text())
    assert samples[("ebb_yields_total", (("outcome", "returned"),))] == 2
    assert samples[("ebb_yields_total", (("outcome", "nothing"),))] == 1
    assert samples[("ebb_yield_returned_bytes_total", ())] == 100 * 1024 * 1024
    assert samples[("ebb_host_memory_pressure_level", ())] == 2
