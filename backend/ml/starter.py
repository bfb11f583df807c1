"""A starter model for demos and first runs: phantom series -> ``cpu`` preset training, only if no model exists.

Equivalent CLI sequence (what :func:`ensure_starter_model` does)::

    ctphase phantom PHANTOMS --n-per-class 160 --seed 1 --max-slices 8 --compression none
    ctphase phantom HEAD --n-per-class 100 --seed 9001 --max-slices 8 --compression none
    ctphase train PHANTOMS --labels PHANTOMS/labels.csv --out MODEL --preset cpu --seed 1 --slices-per-series 4 \
        --head-data HEAD

or in one step: ``ctphase starter-model MODEL``. Many patients with few slices each: rendering and training cost
scale with the number of slices, not of series, and the network learns contrast physiology from the number of
distinct patients and bolus draws. Training fits the series head (:mod:`backend.ml.series_head`) on its 120
validation series plus the 400 head-only series of ``HEAD`` (other patients, never trained on; 46 s of phantoms and
a few seconds of decoding and inference). 8.75 minutes end to end on a 2-core AMD EPYC (Zen 4), where the trainer
measured channels_last faster (11.1 minutes there in the contiguous format; 10.9 on a 2-core Intel Xeon). Series
macro F1 at R = 30 % with the head and its second look (``ctphase predict`` then ``ctphase evaluate``), 160 series
per seed: 0.969 on fresh seed 111 and 0.975 / 0.956 / 0.956 / 0.962 on seeds 101 / 71 / 91 / 61 (the Zen 4 host's
network; without the second look 0.950 and 0.963 / 0.937 / 0.956 / 0.956). The network depends on the host's
floating-point kernels: the Intel host's scored 0.943 / 0.950 / 0.968 on 71 / 91 / 61 without the second look,
0.962 / 0.975 on 41 / 31 and 0.969 on 81, where the previous starter (its head on the plain mean logits of the
validation series alone) scored 0.936 / 0.948 on 71 / 61 and 0.956 / 0.956 on 41 / 31. Twice the patients (1,280 x
8, 2 slices per series per epoch) did not beat 640 x 8 with a head (measured before the head-only series, 17.7 vs
14.7 minutes on a slower host).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Final

from backend.ml.network import MANIFEST_FILE, read_manifest
from backend.ml.train import TrainConfig, load_labeled_series, train_model

log = logging.getLogger(__name__)

STARTER_N_PER_CLASS: Final[int] = 160
STARTER_SEED: Final[int] = 1
STARTER_MAX_SLICES: Final[int] = 8
"""Slices per starter phantom series (spread over the coverage)."""
STARTER_COMPRESSION: Final[str] = "none"
"""Starter phantoms are written uncompressed: every codec of the ``mixed`` archive mix is lossless, so the pixels a
network sees are the same, and skipping the encoding (and the decoding when the slice cache is built) cut the
starter's phantoms from 94 to 65 s and its slice cache from 38 to 8 s (640 series x 8 slices; 1.8 instead of 1.2 GB)."""
STARTER_HEAD_N_PER_CLASS: Final[int] = 100
"""Series per phase of the starter's head-only phantoms (other patients; they fit only the series head)."""
STARTER_HEAD_SEED: Final[int] = 9001
"""Seed of the head-only phantoms: far from the small seeds used for test sets, so a test set is never the data
the head was fitted on."""
STARTER_SLICES_PER_SERIES: Final[int] = 4
"""Slices of each series per training epoch: 640 series x 4 gives the ``cpu`` preset's usual steps per epoch."""
LABELS_FILE: Final[str] = "labels.csv"


def ensure_phantoms(phantom_dir: Path, *, n_per_class: int = STARTER_N_PER_CLASS, seed: int = STARTER_SEED) -> Path:
    """Generate a phantom dataset at ``phantom_dir`` unless one (with its labels.csv) is already there.

    The dataset is written into a temporary folder beside ``phantom_dir`` and renamed into place, so an interrupted
    run leaves no partial dataset that a later call would mistake for a complete one.

    Returns:
        ``phantom_dir``.

    Raises:
        FileExistsError: ``phantom_dir`` exists but holds no labels.csv (not a phantom dataset; not touched).
    """
    if (phantom_dir / LABELS_FILE).is_file():
        return phantom_dir
    if phantom_dir.exists():
        raise FileExistsError(f"{phantom_dir}: exists but has no {LABELS_FILE}; remove it or choose another folder")
    from backend.ml.phantom import generate_dataset

    phantom_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{phantom_dir.name}.tmp-", dir=phantom_dir.parent))
    try:
        log.info("generating starter phantoms (%d per phase, seed %d) in %s", n_per_class, seed, phantom_dir)
        generate_dataset(
            tmp, n_per_class=n_per_class, seed=seed, max_slices=STARTER_MAX_SLICES, compression=STARTER_COMPRESSION
        )
        tmp.rename(phantom_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return phantom_dir


def ensure_starter_model(
    model_dir: Path,
    *,
    phantom_dir: Path | None = None,
    head_phantom_dir: Path | None = None,
    n_per_class: int = STARTER_N_PER_CLASS,
    head_n_per_class: int = STARTER_HEAD_N_PER_CLASS,
    seed: int = STARTER_SEED,
    threads: int | None = None,
    show_progress: bool = False,
) -> Path:
    """Return ``model_dir``, first creating it (phantoms + ``cpu`` preset training) if it holds no model.

    Args:
        model_dir: model folder; kept as is when it already holds a valid manifest.
        phantom_dir: where the phantom dataset lives or is generated (default: ``.starter-phantoms`` beside
            ``model_dir``); reused when present.
        head_phantom_dir: where the head-only phantoms (seed :data:`STARTER_HEAD_SEED`) live or are generated
            (default: ``.starter-head-phantoms`` beside ``model_dir``); reused when present.
        n_per_class: phantom series per phase.
        head_n_per_class: head-only phantom series per phase (0: none; the head is fitted on the validation
            series alone).
        seed: phantom and training seed.
        threads: torch CPU threads.
        show_progress: progress bars on stderr.

    Raises:
        ModelArtifactError: ``model_dir`` holds an invalid manifest (it is not overwritten).
        FileExistsError: ``model_dir`` exists without a manifest (it is not overwritten).
    """
    if (model_dir / MANIFEST_FILE).is_file():
        read_manifest(model_dir)
        return model_dir
    if model_dir.exists():
        raise FileExistsError(f"{model_dir}: exists but holds no model ({MANIFEST_FILE}); remove it or choose another")
    phantoms = ensure_phantoms(
        phantom_dir or model_dir.parent / ".starter-phantoms", n_per_class=n_per_class, seed=seed
    )
    examples = load_labeled_series(phantoms, phantoms / LABELS_FILE)
    head_examples = []
    if head_n_per_class > 0:
        head_phantoms = ensure_phantoms(
            head_phantom_dir or model_dir.parent / ".starter-head-phantoms",
            n_per_class=head_n_per_class,
            seed=STARTER_HEAD_SEED,
        )
        head_examples = load_labeled_series(head_phantoms, head_phantoms / LABELS_FILE)
    config = TrainConfig(
        preset="cpu",
        seed=seed,
        slices_per_series=STARTER_SLICES_PER_SERIES,
        device="cpu",
        threads=threads,
        show_progress=show_progress,
    )
    result = train_model(examples, out_dir=model_dir, config=config, head_examples=head_examples)
    log.info("starter model %s: validation series macro F1 %s", model_dir, result.metrics.get("val_series_macro_f1"))
    return model_dir
