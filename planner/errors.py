"""Exception types of the planner. Each message names the input that is wrong."""


class PlannerError(ValueError):
    """Base class: bad input to the planner, reported to the user without a traceback."""


class SourceError(PlannerError):
    """A model source string or its size overrides cannot be used."""


class MetaBuildError(SourceError):
    """A ``py:`` factory's own code fails on the meta device (it reads a weight's value)."""


class TraceError(PlannerError):
    """A model could not be captured into a layer graph by any method."""


class ClusterError(PlannerError):
    """A cluster description (preset, short form or JSON) is invalid."""


class PlanError(PlannerError):
    """A plan document is malformed or inconsistent; the message names the field."""
