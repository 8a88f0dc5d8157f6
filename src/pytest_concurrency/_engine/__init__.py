"""The one load engine: a plan, its schedule, and the rounds that carry it out with a driver."""

from .plan import LiveFigures, Progress, StormPlan, plan_storm
from .storm import run_plan, run_plan_async

__all__ = ["LiveFigures", "Progress", "StormPlan", "plan_storm", "run_plan", "run_plan_async"]
