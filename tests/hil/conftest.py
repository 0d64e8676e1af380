"""Shared settings of the HIL suites.

The Hypothesis profile ``rig`` is for properties that run on a rig: every example costs
seconds of real time on a device, so there are few of them, no deadline, no shrinking (a
failure is reported as the example that failed) and the same examples on every run
(derandomized, no example database), so that a failure reproduces on the bench. The
fixtures a HIL property uses (``sensor``, ``console``) are function-scoped on purpose: each
example sets what it needs, so that health check is suppressed.

Use it per test, not globally, so that the framework's own properties keep theirs::

    @settings(settings.get_profile("rig"))
"""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "rig",
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=(HealthCheck.function_scoped_fixture, HealthCheck.too_slow),
    print_blob=False,
)
