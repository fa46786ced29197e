"""Each property of template.yaml (tests/support/template_checks.py) holds
on every form of the template: the SAM source, and what the SAM transform
makes of it (the resources CloudFormation actually creates: the roles, the
managed policies attached to them, the event source mapping, the versions
and aliases) with the ``SnapStart`` parameter off and on.
"""

from __future__ import annotations

from typing import Any

import pytest

import local.template as template_module
from tests.support.template import FORMS, load_template, operations_anchors, resolver_for, resources, transformed_forms
from tests.support.template_checks import CHECKS, EMITTED_METRICS, OPERATIONS_LINK, ROUTES, SOURCE_ONLY


@pytest.fixture(scope="module")
def source_template() -> dict[str, Any]:
    """template.yaml as written (short forms read as the local stack reads them)."""
    return load_template()


@pytest.fixture(scope="module")
def template_forms(source_template) -> dict[str, dict[str, Any]]:
    """Every form the checks run on, by name (FORMS): the source and the SAM transform's outputs."""
    return transformed_forms(source_template)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_template_property_holds(template_forms, check, form):
    if check in SOURCE_ONLY and form != "source":
        pytest.skip("a property of the source template")
    assert CHECKS[check](template_forms[form]) == []


def test_alarm_descriptions_point_at_sections_of_the_operations_page(source_template):
    anchors = operations_anchors()
    for name, alarm in resources(source_template, "AWS::CloudWatch::Alarm").items():
        links = OPERATIONS_LINK.findall(alarm["Properties"].get("AlarmDescription", ""))
        assert links and set(links) <= anchors, (name, links)


def test_the_metric_contract_is_what_the_code_emits():
    """The alarms' metric names are the code's: the shared names, one
    ``Refresh<Outcome>`` per refresh outcome, and RefreshFailed aggregating
    exactly the outcomes the README and docs/operations.md list for it."""
    from invoiced_connect.core import metrics
    from invoiced_connect.lifecycle.refresh import RefreshOutcome

    emitted = {metrics.CONNECT_STARTED, metrics.CONNECT_FAILED, metrics.CONNECTED,
               metrics.RECONNECTED, metrics.REFRESH_FAILED, metrics.REFRESH_PERMANENT_FAILURE,
               metrics.TOKEN_READS} | {outcome.metric_name for outcome in RefreshOutcome}
    assert not EMITTED_METRICS - emitted
    aggregated = set(metrics.REFRESH_FAILED_OUTCOMES)
    assert aggregated == {"transient", "unknown_outcome", "needs_reauth", "client_auth_failed", "kept_aside"}


def test_local_stack_reads_both_snapstart_settings(source_template):
    """The local stack's resolver follows the API to the same functions either way."""
    for setting in ("Enabled", "Disabled"):
        resolver = resolver_for(source_template, SnapStart=setting)
        routes = {route.route_key: route.function for route in template_module.http_routes(source_template, resolver)}
        assert routes == ROUTES, setting

