"""Stage: features of a whole dataset, in a resumable zarr store, alone or under torchrun."""

from fxtap._extras import require_extra

# NOTE: checked before the submodules import zarr, so that a missing extra is one typed error.
require_extra("dataset", purpose="the dataset stage (extract_dataset, open_features)")

from fxtap.dataset._demo import demo_job  # noqa: E402
from fxtap.dataset._job import JobInterrupted, JobResult, extract_dataset  # noqa: E402
from fxtap.dataset._store import Features, open_features  # noqa: E402

__all__ = [
    "Features",
    "JobInterrupted",
    "JobResult",
    "demo_job",
    "extract_dataset",
    "open_features",
]
