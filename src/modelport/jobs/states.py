from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Values are Together's wire values."""

    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETE, JobStatus.FAILED)


class JobType(StrEnum):
    MODEL_UPLOAD = "model_upload"
    ADAPTER_UPLOAD = "adapter_upload"

    @classmethod
    def for_upload(cls, kind: str) -> JobType:
        """The job that uploads a model of ``kind`` (``model`` or ``adapter``)."""
        return cls.ADAPTER_UPLOAD if kind == "adapter" else cls.MODEL_UPLOAD


class ModelStatus(StrEnum):
    UPLOADING = "uploading"  # reserves the name; invisible to every API
    CREATED = "created"  # made empty (Together v2 ``POST …/models``); no revision has become ready yet
    READY = "ready"  # has a head revision that serves


class RevisionStatus(StrEnum):
    PENDING = "pending"  # its job runs
    READY = "ready"  # validated and admitted: it can serve
    FAILED = "failed"  # the checks refused it; ``problems`` says why, and it holds no files
