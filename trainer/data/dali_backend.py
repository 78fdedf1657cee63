"""The DALI backend: our sample order fed through `fn.external_source` into the graph of dali_pipeline.

Why not `fn.readers.webdataset`: it splits the dataset into W contiguous parts, one per shard_id,
and shuffles only inside a buffer of each part, so rank r would see the same subset every epoch
(or, with stick_to_shard=False, the next part in a fixed rotation), and its epoch state cannot be
rebuilt for an exact resume. Feeding encoded bytes read at the offsets of the DALI index files
(samples.py) keeps the per-epoch permutation of sampling.Plan exact across ranks; decoding and
augmentation stay in DALI, on the GPU when there is one.

DALI cannot skip a sample (one undecodable image ends the pipeline), so it reads only shards that
`python -m data_prep verify` passed (`"verified": true` in the manifest), and each is the shard
verify saw as far as the start-up check tells (size, fingerprint and index sha256, samples.py).
Nothing is verified or written here: the shards folder may be read-only (launch/docker_run.sh).

Each epoch builds a fresh pipeline seeded from (seed, global_rank, epoch). DALI's random state
cannot be set to a step, so `epoch(e, start_step=k)` runs and discards the first k batches: a resume
costs k batches of decoding and augmentation, once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import feed_ndarray

from data_prep.manifest import ManifestError, manifest_path
from trainer.data.dali_pipeline import augment_pipeline
from trainer.data.samples import SampleIndex
from trainer.data.sampling import epoch_seed
from trainer.types import ViewSpec


class DaliBackend:
    def __init__(self, samples: SampleIndex, views: list[ViewSpec], seed: int, global_rank: int,
                 device: torch.device, mean: list[float], std: list[float], workers: int, batch_size: int):
        if samples.manifest.get("verified") is not True:
            raise ManifestError(f"{manifest_path(samples.root)}: shards not verified, and the DALI backend "
                                f"cannot skip a bad sample: run `python -m data_prep verify --out "
                                f"{samples.root}` first, or use data.backend=torch")
        self.samples, self.views, self.seed, self.global_rank = samples, views, seed, global_rank
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # DALI needs a device id
        self.device, self.mean, self.std = device, mean, std
        self.workers, self.batch_size = max(1, workers), batch_size
        self.stats = {"corrupt_skipped": 0}  # never skips: unverified data is refused above

    def _source(self, batches: list[np.ndarray]):
        def read(iteration: int) -> list[np.ndarray]:
            if iteration >= len(batches):
                raise StopIteration
            return [np.frombuffer(self.samples.read(i), dtype=np.uint8) for i in batches[iteration]]

        return read

    def run(self, batches: list[np.ndarray], epoch: int, start_step: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        cuda = self.device.type == "cuda"
        pipe = augment_pipeline(
            source=self._source(batches), views=self.views, device="gpu" if cuda else "cpu",
            mean=self.mean, std=self.std,
            layout="HWC" if cuda else "CHW",  # HWC permuted to NCHW is channels_last for free
            batch_size=self.batch_size, num_threads=self.workers, device_id=self.device.index if cuda else None,
            seed=epoch_seed(self.seed, self.global_rank, epoch), prefetch_queue_depth=2,
        )
        pipe.build()
        for step, indices in enumerate(batches):
            outputs = pipe.run()
            if step < start_step:
                continue
            labels = torch.from_numpy(self.samples.labels[indices]).to(self.device, non_blocking=True)
            yield [self._to_torch(out) for out in outputs], labels

    def _to_torch(self, tensor_list) -> torch.Tensor:
        if self.device.type != "cuda":
            return torch.from_numpy(np.array(tensor_list.as_tensor()))  # a copy: DALI reuses its buffers
        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out.permute(0, 3, 1, 2)
