"""Data for fine-tuning: built-in, downloaded and user data sets, splits, and decoding into memory.

    ds = load_dataset("hymenoptera")          # or "digits", "shapes", a folder, a .zip
    split = make_split(ds, val_fraction=0.2, seed=0)
    train = decode(ds, split.train, image_size=224)   # uint8 (N, 3, 224, 224), decoded once
"""
from ftlab.data.dataset import DataError, Dataset, DatasetInfo, DatasetUnavailable
from ftlab.data.decoding import Decoded, DecodingStopped, decode, decode_image
from ftlab.data.folders import save_upload
from ftlab.data.prepared import (Prepared, data_seed, identity, is_shapes, load_for, prepare, reusing_decoded,
                                 shapes_options, split_for, split_identity)
from ftlab.data.registry import list_datasets, load_dataset
from ftlab.data.shapes import ShapesOptions
from ftlab.data.splits import Split, long_tail_indices, make_split

__all__ = [
    "DataError", "DatasetUnavailable", "DecodingStopped", "DatasetInfo", "Dataset", "ShapesOptions", "Split", "Decoded",
    "list_datasets", "load_dataset", "make_split", "long_tail_indices", "decode", "decode_image", "save_upload",
    "Prepared", "data_seed", "identity", "is_shapes", "reusing_decoded", "load_for", "prepare", "shapes_options", "split_for", "split_identity",
]
