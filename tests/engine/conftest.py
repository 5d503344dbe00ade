"""Engine-test fixtures: the hand-registered fake components."""

from tests.engine._fakes import fakes  # noqa: F401 - a fixture, used by name
