"""Names inside the pipeline's outputs, each declared once.

dvc.yaml names the folders a stage reads and writes; the files *inside* those folders are named
here, and every module that reads or writes one imports the name from here. The same goes for
split names, evaluation views and member names, which appear in file names and metric keys.
"""

from __future__ import annotations

# Splits of the dataset (ImageNet's own names), in the order they are processed.
TRAIN, VAL = "train", "val"
SPLITS = (TRAIN, VAL)

# Evaluation views (§4.1): the centre 224 patch, and the ten patches (corners, centre, mirrors).
CENTER, TEN_CROP = "center", "ten_crop"
VIEWS = (CENTER, TEN_CROP)

# prepare's output folder
INDEX_FILE = "index.parquet"  # one row per usable image
CLASSES_FILE = "classes.csv"  # label, wnid, name
QUALITY_REPORT_FILE = "quality_report.csv"  # every unusable file and why
IGNORED_FILE = "ignored.csv"  # files skipped by name: what an OS leaves in folders (.DS_Store, ...)
DATASET_FILE = "dataset.json"  # source, counts, provenance
IMAGES_DIR = "images"  # the synthetic source's drawn tree

# preprocess's output folder
MANIFEST_FILE = "manifest.json"  # every shard with its sha256, written last
MEAN_FILE = "mean.npy"  # the per-pixel mean image over train (§2)
PCA_FILE = "pca.json"  # RGB eigenvectors and eigenvalues over train (§4.1)

# train's outputs: models/<member>/{model.pt, summary.json}, history/<member>.csv
MODEL_FILE = "model.pt"
MEMBER_SUMMARY_FILE = "summary.json"  # a member's final figures and provenance
HISTORY_SUFFIX = ".csv"
TRACKING_STATE_FILE = "tracking.json"

# evaluate's report folder
PREDICTIONS_DIR = "predictions"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion.png"
ENSEMBLE_PLOT_FILE = "ensemble.png"
REPORT_FILES = (CONFUSION_FILE, ENSEMBLE_PLOT_FILE, PER_CLASS_FILE)

# a study's report folder (reports/study*): its table, plots, figures and REPORT.md
STUDY_RESULTS_FILE = "results.csv"  # one row per (variant, seed)
STUDY_SUMMARY_FILE = "summary.json"  # per variant: intervals over seeds, paired differences, Figure 1
STUDY_TABLE_FILE = "table.md"
STUDY_REPORT_FILE = "REPORT.md"
ERRORS_PLOT, FIGURE1_PLOT, FIGURE1_CSV = "errors.png", "figure1.png", "figure1.csv"
FIGURES_DIR = "figures"  # Figures 3 and 4 (alexnet/evaluation/figures.py)
FIGURE3_FILE, FIGURE4_FILE, FIGURES_JSON = "figure3_conv1_kernels.png", "figure4_neighbours.png", "figures.json"

# The project root
DVC_LOCK_FILE = "dvc.lock"
ARTIFACTS_DIR = "mlartifacts"  # MLflow's artifact store beside a SQLite tracking database


def member_name(index: int) -> str:
    """member-0, member-1, ...: the folder, file and MLflow run name of one ensemble member."""
    return f"member-{index}"
