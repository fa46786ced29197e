"""A stand-in for the tracer's provider (the X-Ray recorder): it records each
subsegment opened and what was put on it."""

from __future__ import annotations

import contextlib


class FakeSubsegment:
    def __init__(self, name: str) -> None:
        self.name, self.annotations, self.metadata = name, {}, {}

    def put_annotation(self, key, value):
        self.annotations[key] = value

    def put_metadata(self, key, value, namespace=None):
        self.metadata[key] = value


class FakeProvider:
    def __init__(self) -> None:
        self.subsegments: list[FakeSubsegment] = []

    @contextlib.contextmanager
    def in_subsegment(self, name=None, **kwargs):
        subsegment = FakeSubsegment(name)
        self.subsegments.append(subsegment)
        yield subsegment
