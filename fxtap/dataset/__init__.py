"""Stage: features of a whole dataset, in a resumable zarr store, alone or under torchrun."""

from fxtap.dataset._demo import demo_job
from fxtap.dataset._job import JobInterrupted, JobResult, extract_dataset
from fxtap.dataset._store import Features, open_features

__all__ = [
    "Features",
    "JobInterrupted",
    "JobResult",
    "demo_job",
    "extract_dataset",
    "open_features",
]
