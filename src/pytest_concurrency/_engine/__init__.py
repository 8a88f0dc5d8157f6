"""The one load engine: a plan, its schedule, and the rounds that carry it out with a driver.

Nothing is imported here: a driver or the fold that names a type of the engine (the plan,
the schedule) loads that module only, not the storm that runs them. ``plan.plan_storm``
and ``storm.run_plan`` / ``storm.run_plan_async`` are the entry points.
"""
