"""What the app keeps between reruns: the job registry (one per server process), loaded data
sets, block tables and predictors, each under a Streamlit cache."""
from __future__ import annotations

import streamlit as st

from ftlab import data, explore, paths
from ftlab.config import TrainConfig
from ftlab.jobs import Background, JobRegistry
from ftlab.runs import RunStore


@st.cache_resource(show_spinner=False)
def registry() -> JobRegistry:
    """One per server process: jobs survive reruns, page switches and browser refreshes."""
    return JobRegistry()


def store() -> RunStore:
    """The run store under FTLAB_HOME (read each time, so tests can point it elsewhere)."""
    return RunStore(paths.home())


@st.cache_resource(max_entries=8, show_spinner="Loading the data set…")
def _dataset(identity: str, name: str, _shapes: data.ShapesOptions, data_dir: str, download: bool) -> data.Dataset:
    # keyed by the data set's identity (a folder's files, the shapes options), not by its name alone
    return data.load_dataset(name, shapes=_shapes, data_dir=data_dir, download=download)


def dataset(config: TrainConfig, *, download: bool = False) -> data.Dataset:
    """The config's data set. Raises `ftlab.data.DataError` with a message for the user.

    ``download=False`` never touches the network: a missing download is a `DatasetUnavailable`.
    """
    data_dir = paths.data_dir()
    return _dataset(data.identity(config, data_dir), config.dataset, data.shapes_options(config), str(data_dir),
                    download)


@st.cache_data(max_entries=16, show_spinner=False)
def samples(key: str, _ds: data.Dataset, _indices, per_class: int, size: int) -> dict:
    """Decoded sample images per class; ``key`` names the data set and the indices for the cache."""
    return explore.samples_per_class(_ds, _indices, per_class, size)


@st.cache_data(max_entries=32, show_spinner="Counting the model's parameters…")
def block_table(config: TrainConfig, num_classes: int | tuple[tuple[str, int], ...]) -> explore.BlockTable:
    """`ftlab.explore.block_table`, kept per config (a frozen dataclass: Streamlit hashes its fields)."""
    return explore.block_table(config, num_classes)


@st.cache_resource(max_entries=2, show_spinner="Loading the run's model…")
def predictor(run_id: str, home: str):
    from ftlab.predict import Predictor

    return Predictor.for_run(run_id, RunStore(home))


@st.cache_resource(show_spinner=False)
def _background() -> dict:
    return {}


def background(owner: str, kind: str) -> "Background | None":
    """This session's latest sweep or probe (``kind``), kept per server process like the jobs."""
    return _background().get((owner, kind))


def start_background(owner: str, kind: str, work, name: str) -> Background:
    """Start ``work`` (`ftlab.jobs.Background`) for ``owner`` unless its last one of ``kind`` still runs."""
    running = background(owner, kind)
    if running is not None and running.alive():
        return running
    job = Background(work, name).start()
    _background()[(owner, kind)] = job
    return job


# --- what the model sees (Inspect page) --------------------------------------------------------

@st.cache_resource(max_entries=4, show_spinner="Loading the run's model for its maps…")
def explainer(run_id: str, home: str):
    from ftlab.explain import Explainer

    return Explainer.for_run(run_id, RunStore(home))


@st.cache_data(max_entries=32, show_spinner="Drawing the maps…")
def val_explanation(run_id: str, home: str, position: int):
    """`ftlab.explain.of_val_image` of a kept run's val image, kept per (run, image)."""
    from ftlab import explain

    record = RunStore(home).get(run_id)
    return explain.of_val_image(explainer(run_id, home), record, dataset(TrainConfig.from_dict(record.config)),
                                position)


@st.cache_data(max_entries=32, show_spinner="Drawing the maps…")
def file_explanation(run_id: str, home: str, content: bytes, name: str, true_class: str | None):
    """`ftlab.explain.of_file` of an uploaded image, kept per (run, file, true class)."""
    from ftlab import explain

    return explain.of_file(explainer(run_id, home), content, name, true_class)


@st.cache_resource(max_entries=4, show_spinner=False)
def _feature_figures(key: str, config: TrainConfig, _ds: data.Dataset):
    from ftlab import features

    return features.figures(config, _ds)


def feature_figures(config: TrainConfig, ds: data.Dataset):
    """`ftlab.features.figures` of the config's data and backbone, kept per features file and split options
    (the config's fields, less those that change neither)."""
    from dataclasses import replace

    from ftlab import features

    return _feature_figures(features.source_for(config, reference_if_random=True).key,
                            replace(config, name="", drop_duplicates=False), ds)


@st.cache_data(max_entries=8, show_spinner="Drawing the map…")
def feature_map(key: str, _vectors, method: str):
    """`ftlab.feature_diversity.feature_map`, kept per features and method: t-SNE takes seconds."""
    from ftlab import feature_diversity

    return feature_diversity.feature_map(_vectors, method)


@st.cache_data(max_entries=32, show_spinner=False)
def thumbnails(key: str, _ds: data.Dataset, items: tuple[int, ...], size: int) -> list:
    from ftlab import features

    return features.thumbnails(_ds, list(items), size)
