"""bridge.metrics: target labels stay bounded whatever clients send (issue #14 "Run")."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import MAX_TARGETS, Metrics


def targets(metrics: Metrics) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "mcp_bridge_request_targets_total":
                found[sample.labels["target"]] = sample.value
    return found


def test_target_labels_are_capped_per_server_and_method_then_other() -> None:
    metrics = Metrics()
    for n in range(MAX_TARGETS + 50):
        metrics.count_target("s", "tools/call", f"tool_{n}", "ok")
    metrics.count_target("s", "tools/call", "tool_0", "ok")  # a known one keeps its label
    metrics.count_target("other-server", "tools/call", "fresh", "ok")  # its own budget
    seen = targets(metrics)
    assert seen["other"] == 50
    assert seen["tool_0"] == 2
    assert seen["fresh"] == 1
    assert len(seen) == MAX_TARGETS + 2


def test_target_labels_are_cleaned_and_cut() -> None:
    metrics = Metrics()
    metrics.count_target("s", "tools/call", 'a"b\n{c}' + "x" * 200, "ok")
    [label] = targets(metrics)
    assert label.startswith("a_b_c_x")
    assert len(label) == 64
