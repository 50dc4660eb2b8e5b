"""The datasets: readers of the seven layouts, the prepared dataset, pairs, collate, identity sampler, the
synthetic twins (``synthetic``), image decoding (``images``) and tokenisation (``text``).

Data flows once, from files to tensors::

    files on disk (real, or synthetic written in the same layout)
      -> read_dataset(name, root, split)       one DataFrame row per caption
      -> prepare_dataset(name, profile)        vocabulary (train only) + image cache per split
      -> PairDataset + collate_pairs           images (B, 3, H, W), token ids (B, T), lengths, labels
      -> IdentityBatchSampler                  several captions of one identity per batch

Labels follow the released code: the person id for CUHK-PEDES (and ICFG-PEDES, RSTPReid), the image id for Flickr30K
and MSCOCO (two captions of one image are both positives), the class for CUB and Flowers.

Layouts (under ``root``, the dataset's folder):

===========  ===================================================================================
cuhk_pedes   ``reid_raw.json`` (list of ``{split, captions, file_path, processed_tokens, id}``),
             images at ``imgs/<file_path>``
flickr30k    ``dataset_flickr30k.json`` (``{"images": [{filename, imgid, split, sentences}]}``),
             images at ``flickr30k-images/<filename>``
mscoco       ``dataset_coco.json`` (as Flickr30K plus ``filepath``), images at
             ``<filepath>/<filename>``; splits train, restval, val, test
cub          ``cvpr2016_cub/text_c10/<class>/<stem>.txt`` (10 captions, one a line),
             ``cvpr2016_cub/trainvalclasses.txt``, ``testclasses.txt``,
             images at ``CUB_200_2011/images/<class>/<stem>.jpg``
flowers      ``cvpr2016_flowers/text_c10/class_XXXXX/<stem>.txt``, the same class files,
             images at ``jpg/<stem>.jpg``
icfg_pedes   ``ICFG-PEDES.json`` (list of ``{id, file_path, captions, processed_tokens, split}``,
             split train / test; ``val`` = held-out train identities, see :data:`HELD_OUT_EVERY`),
             images at ``imgs/<file_path>``
rstpreid     ``data_captions.json`` (list of ``{id, img_path, captions, split}``, split train /
             val / test), images at ``imgs/<img_path>``
===========  ===================================================================================

ICFG-PEDES and RSTPReid postdate the paper (2021); ``docs/datasets.md`` says where every dataset
is obtained, and ``python -m cmp_utils.data check DATA_DIR`` checks a data folder against the
published sizes (:func:`check_data_dir`).

Tokens follow the release: Flickr30K / MSCOCO use the Karpathy JSON's ``tokens`` as given; the
other datasets recompute them from the raw caption with :func:`cmp_utils.text.tokenize` (lower
case, punctuation deleted, as the release's ``builddata/dataset_utils.py`` does for CUHK-PEDES,
whose ``processed_tokens`` field is not used).

Class-level splits (cub, flowers): ``train`` = the trainval classes, ``test`` = the test
classes (zero-shot). With ``val_class_fraction > 0`` a validation split of whole classes is
carved from trainval deterministically (every k-th class of the sorted trainval list, k =
round(1 / fraction)), and ``train`` becomes the remaining classes; ``trainval`` always names
all trainval classes.
"""

from .layouts import (
    COLUMNS,
    NUM_CLASSES_FROM,
    LAYOUTS,
    ANNOTATION_FILES,
    SPLITS,
    VALIDATION_SPLIT,
    TEST_SPLIT,
    CLASS_LEVEL,
    IMAGE_FOLDER,
    TEXT_FOLDER,
    PUBLISHED_SIZES_SOURCE,
    PUBLISHED_SIZES,
    PUBLISHED_SIZES_SOURCES,
    published_sizes,
    split_statistics,
    REAL_IMAGE_SIZE,
    DatasetLayoutError,
    MissingImagesError,
    FILE_SPLITS,
)
from .readers import (
    AnnotationEncodingError,
    read_utf8,
    PERSON_JSON,
    HELD_OUT_EVERY,
    held_out_identities,
    read_class_list,
    class_splits,
    class_label,
    read_dataset,
    add_indices,
    image_paths_of,
)
from .prepared import (
    PreparedDataset,
    default_image_size,
    synthetic_root,
    ensure_synthetic,
    dataset_root,
    files_fingerprint,
    prepare_dataset,
    vocabulary_file_name,
    RECIPE_OPTIONS,
    recipe_options,
    check_prepared_options,
)
from .pairs import (
    PairDataset,
    collate_pairs,
    IdentityBatchSampler,
)
from .check import (
    IMAGE_SUFFIXES,
    SIZE_QUANTITIES,
    expected_sizes,
    check_dataset,
    check_data_dir,
)

__all__ = [
    "COLUMNS",
    "NUM_CLASSES_FROM",
    "LAYOUTS",
    "ANNOTATION_FILES",
    "SPLITS",
    "VALIDATION_SPLIT",
    "TEST_SPLIT",
    "CLASS_LEVEL",
    "IMAGE_FOLDER",
    "TEXT_FOLDER",
    "PUBLISHED_SIZES_SOURCE",
    "PUBLISHED_SIZES",
    "PUBLISHED_SIZES_SOURCES",
    "published_sizes",
    "split_statistics",
    "REAL_IMAGE_SIZE",
    "DatasetLayoutError",
    "MissingImagesError",
    "FILE_SPLITS",
    "AnnotationEncodingError",
    "read_utf8",
    "PERSON_JSON",
    "HELD_OUT_EVERY",
    "held_out_identities",
    "read_class_list",
    "class_splits",
    "class_label",
    "read_dataset",
    "add_indices",
    "image_paths_of",
    "PreparedDataset",
    "default_image_size",
    "synthetic_root",
    "ensure_synthetic",
    "dataset_root",
    "files_fingerprint",
    "prepare_dataset",
    "vocabulary_file_name",
    "RECIPE_OPTIONS",
    "recipe_options",
    "check_prepared_options",
    "PairDataset",
    "collate_pairs",
    "IdentityBatchSampler",
    "IMAGE_SUFFIXES",
    "SIZE_QUANTITIES",
    "expected_sizes",
    "check_dataset",
    "check_data_dir",
]
