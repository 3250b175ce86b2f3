"""Data: choose a data set, see its classes and how balanced they are, try a long tail."""
import contextlib
from dataclasses import replace

import streamlit as st

from ftlab import data, diversity, explore, features, paths
from ftlab import feature_diversity as fd
from ui import charts, keys as K, parts, resources, session as S

RATIOS = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
SAMPLES_PER_CLASS, SAMPLE_PX = 6, 64
THUMB_PX, SELECTED_SHOWN, PAIRS_SHOWN = 96, 24, 8  # feature space: thumbnails of the map's selection and of pairs
LABELS_HELP = ("Further tasks: a labels.csv beside the class folders, header `file,task_a,task_b,…`, one row per "
               "image (its path as `ants/x.jpg`, then its label in each task). The class folders stay the first task.")
state = st.session_state
infos = {i.name: i for i in data.list_datasets()}


def choose(name: str) -> None:
    state[K.DATASET] = name


def try_load(name: str, *, download: bool = False) -> bool:
    """Load ``name`` with the session's options; on success it becomes the data set."""
    try:
        resources.dataset(replace(S.current_config(state), dataset=name), download=download)
    except data.DataError as err:
        st.error(str(err))
        return False
    choose(name)
    return True


def balance(figures: diversity.Distribution) -> None:
    """The class balance figures of one task's training split."""
    m = st.columns(5)
    m[0].metric("Entropy (nats)", f"{figures.entropy_nats:.3f}", help="H = −Σ p log p over the classes")
    m[1].metric("Entropy (bits)", f"{figures.entropy_bits:.3f}")
    m[2].metric("Normalised entropy", f"{figures.normalised_entropy:.3f}",
                help="H / log K: 1 when all classes are equal")
    m[3].metric("Effective classes", f"{figures.effective_classes:.2f}", help="e^H: so many equal classes have this H")
    m[4].metric("Imbalance ratio", f"{figures.imbalance_ratio:.2f}", help="largest / smallest class")


st.title("Data")
source = st.radio("Where the data comes from", K.SOURCES, key=K.SOURCE, horizontal=True, persist_state=K.PERSIST)

if source == "Built-in":
    builtins = [n for n, i in infos.items() if i.kind == "builtin"]
    name = st.selectbox("Built-in data set", builtins, key=K.BUILTIN, persist_state=K.PERSIST,
                        format_func=lambda n: f"{n} — {infos[n].description}")
    choose(name)
    if name == "shapes":
        cols = st.columns(4)
        cols[0].slider("Classes", 2, 8, key=K.cfg("shapes_classes"), persist_state=K.PERSIST)
        cols[1].number_input("Images per class", 2, 5000, step=10, key=K.cfg("shapes_per_class"),
                             persist_state=K.PERSIST)
        cols[2].slider("Noise", 0.0, 1.0, step=0.05, key=K.cfg("shapes_noise"), persist_state=K.PERSIST)
        cols[3].number_input("Seed", 0, 2**31 - 1, key=K.cfg("seed"), persist_state=K.PERSIST,
                             help="Generates the shapes, and seeds the split, initialisation and batches.")
elif source == "Download":
    downloads = [n for n, i in infos.items() if i.kind == "download"]
    name = st.selectbox("Data set", downloads, key=K.DOWNLOAD, persist_state=K.PERSIST,
                        format_func=lambda n: f"{n} — {infos[n].description}")
    try:
        resources.dataset(replace(S.current_config(state), dataset=name), download=False)
        choose(name)
        st.caption(f"{name} is in the data folder ({paths.data_dir()}).")
    except data.DataError as err:
        st.warning(str(err))
        if st.button(f"Download {name}", key=K.DOWNLOAD_BUTTON):
            with st.spinner(f"Downloading {name}…"):
                try_load(name, download=True)
elif source == "Upload a .zip":
    upload = st.file_uploader("A .zip with one folder of images per class (optionally inside train/, val/, test/)",
                              type=["zip"], key=K.UPLOAD, help=LABELS_HELP)
    if upload is not None:
        try:
            # every rerun sees the upload again: hash and store its bytes once per uploaded file
            saved = state.get(K.UPLOAD_SAVED)
            if not saved or saved[0] != upload.file_id:
                saved = (upload.file_id, str(data.save_upload(upload.name, upload.getvalue(), paths.data_dir())))
                state[K.UPLOAD_SAVED] = saved
        except (data.DataError, OSError) as err:
            st.error(f"The upload could not be kept: {err}")
        else:
            if try_load(saved[1]):
                st.caption(f"Kept as {saved[1]}.")
else:
    folder = st.text_input("Folder path", key=K.FOLDER, persist_state=K.PERSIST, placeholder="/path/to/images",
                           help="A folder with one subfolder of images per class, optionally inside train/, val/, "
                                f"test/. {LABELS_HELP}")
    if st.button("Use this folder", key=K.USE_FOLDER):
        if folder.strip():
            try_load(folder.strip())
        else:
            st.error("Enter the path of a folder first.")

config = S.current_config(state)
try:
    ds = resources.dataset(config)
    st.subheader(f"{explore.display_name(config.dataset)}: {len(ds.classes)} classes, {len(ds):,} images")
    st.caption(ds.source)
    for note in ds.notes:
        st.warning(note)
    cols = st.columns(4)
    cols[0].slider("Validation share", 0.05, 0.5, step=0.05, key=K.cfg("val_fraction"), persist_state=K.PERSIST,
                   help="Carved from the training images when the data set has no val split of its own.")
    cols[1].slider("Test share", 0.0, 0.5, step=0.05, key=K.cfg("test_fraction"), persist_state=K.PERSIST,
                   help="Carved when the data set has no test split; 0 means no test evaluation.")
    if config.dataset.lower() != "shapes":
        cols[2].number_input("Seed", 0, 2**31 - 1, key=K.cfg("seed"), persist_state=K.PERSIST,
                             help="Seeds the split, and the run's initialisation and batches.")
    cols[3].number_input("Split seed", 0, 2**31 - 1, key=K.cfg("split_seed"), persist_state=K.PERSIST,
                         placeholder="the seed",
                         help="Seeds the split (and generates the shapes) apart from the run's seed; empty: the "
                              "seed. A sweep holds it fixed so that every member is scored on the same images.")
    st.number_input("Train on at most this many images per class (0: all)", 0, 1_000_000,
                    key=K.cfg("train_per_class"), persist_state=K.PERSIST,
                    help="Draws that many training images from each class (with the split seed); the validation "
                         "split stays whole, so runs with fewer images are scored on the same images: a "
                         "data-efficiency point.")
    given = sorted(set(ds.given_split.tolist()) - {""})
    if given:
        st.caption(f"The data set brings its own {', '.join(given)} split(s); they are used as given.")
    with st.spinner("Finding near-duplicates…") if config.drop_duplicates else contextlib.nullcontext():
        split = data.split_for(config, ds)
    counts = explore.split_counts(ds, split)
except data.DataError as err:
    st.error(str(err))
    st.stop()

if ds.tasks:
    st.caption(f"{parts.plain(explore.tasks_text(ds))} The first, {parts.plain(ds.task)}, is split, sampled and "
               "simulated below; each task's classes are counted.")
    st.markdown(f"**Task {parts.plain(ds.task)}**")
st.plotly_chart(charts.class_counts(ds.classes, counts), key="data.counts_chart")
figures = diversity.distribution(counts["train"])
tail = f" ({explore.long_tail_text(config.imbalance_ratio)} applied)" if config.imbalance_ratio > 1 else ""
st.caption(f"Class balance of the training split{tail}, {figures.total:,} images")
balance(figures)
for i, (task, classes, _) in enumerate(explore.data_tasks(ds)[1:]):
    st.markdown(f"**Task {parts.plain(task)}**")
    task_counts = explore.split_counts(ds, split, task)
    st.plotly_chart(charts.class_counts(classes, task_counts), key=f"data.task_counts_chart.{i}")
    st.caption(f"Balance of {parts.plain(task)} in the training split{tail}")
    balance(diversity.distribution(task_counts["train"]))

st.subheader("Samples")
base = data.split_for(replace(config, imbalance_ratio=1.0), ds)
sample_key = data.split_identity(config)
grid = resources.samples(sample_key, ds, base.train, SAMPLES_PER_CLASS, SAMPLE_PX)
for cls, images in grid.items():
    label, pics = st.columns([1, 6])
    label.markdown(f"**{cls}**")
    pics.image(images, width=SAMPLE_PX)
if len(ds.classes) > len(grid):
    st.caption(f"The first {len(grid)} of {len(ds.classes)} classes.")

st.subheader("Diversity in feature space")
reference = features.source_for(config, reference_if_random=True)
st.caption(f"How the images spread as {reference.backbone} ({reference.weights} weights, {reference.image_size} px) "
           "sees them: its frozen features, pooled over the image, computed once per data set and backbone and "
           "kept on disk. The Vendi score is the effective number of distinct images (exp of the entropy of the "
           "similarity matrix's eigenvalues): 1 for copies of one image, n for n unrelated ones.")
try:
    measured = features.ready(config, ds)
except (data.DataError, ValueError) as err:
    st.error(str(err))
    measured = False
if not measured and st.button(f"Measure it: one forward pass over the {sum(map(sum, counts.values())):,} images",
                              key=K.FEATURES_MEASURE):
    with st.spinner(f"Computing {reference.backbone}'s features…"):
        try:
            resources.feature_figures(config, ds)
        except (data.DataError, ValueError) as err:
            st.error(f"The features could not be computed: {err}")
        else:
            st.rerun()  # the page again, its figures read from the disk, without the button
found = resources.feature_figures(config, ds) if measured else None
if found is not None:
    report, embedded = found
    m = st.columns(4)
    m[0].metric("Vendi score (training split)", f"{report.vendi:.1f}",
                help=f"of {report.train_images:,} training images: so many distinct images they are worth")
    m[1].metric("Distinct share", f"{report.share:.0%}", help="Vendi score / images")
    m[2].metric("Near-duplicates in train", f"{report.within_count:,}",
                help=f"pairs with cosine similarity at least {report.threshold:g}")
    m[3].metric("Near-duplicates across splits", f"{report.across_count:,}",
                help="a validation or test image and a training image: it inflates validation accuracy")
    st.plotly_chart(charts.vendi_per_class([c.name for c in report.classes], [c.images for c in report.classes],
                                           [c.vendi for c in report.classes]), key="data.vendi_chart")
    st.dataframe([{"class": c.name, "images": c.images, "Vendi score": round(c.vendi, 2),
                   "distinct share": f"{c.share:.0%}", "spread": round(c.spread, 3)} for c in report.classes],
                 hide_index=True)
    st.caption("Spread: the mean distance of a class's (unit-length) features to their centroid; a small spread "
               "is a class of similar images.")
    method = st.radio("Map", fd.MAP_METHODS, key=K.FEATURE_MAP_METHOD, horizontal=True, persist_state=K.PERSIST,
                      format_func=lambda m: {"pca": "PCA", "tsne": "t-SNE (slower: seconds, a minute on a busy machine)"}[m])
    items, labels, vectors = embedded.train()
    xy = resources.feature_map(f"{reference.key} {data.split_identity(config)} {config.imbalance_ratio} "
                               f"{config.train_per_class}", vectors, method)
    event = st.plotly_chart(charts.feature_map(xy.tolist(), labels.tolist(), ds.classes, items.tolist(), method),
                            key=K.FEATURE_MAP, on_select="rerun", selection_mode=("points", "box", "lasso"))
    picked = charts.selected_items(event)[:SELECTED_SHOWN]
    if picked:
        st.image(resources.thumbnails(reference.key, ds, tuple(picked), THUMB_PX), width=THUMB_PX,
                 caption=[features.item_name(ds, i) for i in picked])
    else:
        st.caption("Select points on the map (click, box or lasso) to see their images here.")
    st.markdown(f"**Near-duplicates** (cosine similarity at least {report.threshold:g})")
    shown = (list(report.across) + list(report.within))[:PAIRS_SHOWN]
    for p in shown:
        a, b, words = st.columns([1, 1, 4])
        pics = resources.thumbnails(reference.key, ds, (p.index_a, p.index_b), THUMB_PX)
        a.image(pics[0], width=THUMB_PX)
        b.image(pics[1], width=THUMB_PX)
        words.write(f"{p.split_a} {features.item_name(ds, p.index_a)} ≈ {p.split_b} "
                    f"{features.item_name(ds, p.index_b)}: {p.similarity:.3f}")
    if not shown:
        st.caption("No two images are that alike.")
    elif report.within_count + report.across_count > len(shown):
        st.caption(f"The first {len(shown)} of {report.within_count + report.across_count:,} pairs, across splits first.")
    st.toggle(f"Drop them from the run: {report.drop_held:,} validation/test and {report.drop_train:,} training "
              "image(s)", key=K.cfg("drop_duplicates"), persist_state=K.PERSIST,
              help="Each held-out image that nearly copies a training image, and all but the first of each group of "
                   "training copies, are left out of the split when the run starts.")
    near, confused = st.columns(2)
    near.markdown("**Nearest classes in feature space**")
    near.dataframe([{"classes": f"{p.a} · {p.b}", "nearest neighbour in the other": f"{p.mixed:.0%}",
                     "centroid distance": round(p.distance, 3)} for p in report.nearest], hide_index=True)
    run_id, pairs = features.latest_confused_pairs(resources.store().list(), config.dataset, ds.classes)
    confused.markdown("**Most confused by the latest run**")
    if pairs:
        confused.dataframe(pairs, hide_index=True)
        confused.caption(f"Run {run_id}, on its validation images.")
    else:
        confused.caption("No finished run on these classes yet: train one to compare.")
else:
    st.toggle("Drop near-duplicates from the run (measure first)", key=K.cfg("drop_duplicates"),
              persist_state=K.PERSIST, disabled=not config.drop_duplicates,
              help="Leaves out each held-out image that nearly copies a training image, and all but the first of each "
                   "group of training copies; measure first to see them.")

st.subheader("Imbalance simulator")
st.caption("Subsample the training split to a long tail: the largest class stays, each next one keeps fewer "
           "images, down to largest / ratio. See what it does to the figures before you apply it.")
before = explore.split_counts(ds, base)["train"]
ratio = st.select_slider("Imbalance ratio (largest / smallest class)", RATIOS, key=K.SIM_RATIO,
                         persist_state=K.PERSIST, format_func=lambda r: f"{r:g}")
after, tail_figures = explore.long_tail_figures(before, ratio)
st.plotly_chart(charts.long_tail(ds.classes, before, after, ratio), key="data.tail_chart")
for col, (label, value, change) in zip(st.columns(len(tail_figures)), tail_figures):
    col.metric(label, value, change)
st.toggle("Apply this long tail to the run", key=K.SIM_APPLY, persist_state=K.PERSIST,
          help="Sets the run's imbalance ratio: the training split is subsampled this way when the run starts.")

st.subheader("Suggestions")
tips = diversity.suggestions(counts["train"]) + (fd.suggestions(found[0]) if found is not None else [])
if not tips:
    st.caption("Nothing to suggest for this class distribution.")
for i, tip in enumerate(tips):
    with st.container(border=True):
        st.markdown(f"**{tip.title}**")
        st.write(tip.reason)
        st.button(f"Use it: {diversity.describe_setting(dict(tip.setting))}", key=K.SUGGESTION.format(i),
                  on_click=S.apply_suggestion, args=(state, dict(tip.setting), config))

st.caption("The data set, split and long tail chosen here carry over to the Model and Train pages.")
