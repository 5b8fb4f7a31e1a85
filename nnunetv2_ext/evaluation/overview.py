"""One picture of a trained model on one case: a slice of each modality, the reference and the prediction overlaid
in the BraTS regions' colours, and nnU-Net's training curve (the quickstart's ``overview.png``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

# nested BraTS regions, drawn in this order (ET on top), as label sets of nnU-Net's BraTS convention
# (1 edema, 2 necrosis / non-enhancing core, 3 enhancing tumour)
REGION_COLOURS: Tuple[Tuple[str, Tuple[int, ...], Tuple[float, float, float]], ...] = (
    ("WT", (1, 2, 3), (0.10, 0.80, 0.20)),
    ("TC", (2, 3), (0.15, 0.45, 1.00)),
    ("ET", (3,), (1.00, 0.15, 0.10)),
)


def read_array(path: str | os.PathLike) -> np.ndarray:
    """A NIfTI (or any SimpleITK-readable) image as a numpy array in ``(z, y, x)`` order."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def tumour_slice(label: np.ndarray) -> int:
    """The axial (first-axis) slice with the most tumour voxels; the middle slice when there is none."""
    area = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
    return int(np.argmax(area)) if area.any() else label.shape[0] // 2


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """An RGB slice: the image (min-max scaled grey) with the BraTS regions of ``label`` blended in."""
    lo, hi = np.percentile(image, (0.5, 99.5)) if image.any() else (0.0, 1.0)
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for _, labels, colour in REGION_COLOURS:
        mask = np.isin(label, labels)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb


def case_dice(reference: np.ndarray, prediction: np.ndarray) -> dict:
    """Dice per BraTS region (``REGION_COLOURS``) of one case."""
    from nnunetv2_ext.evaluation.metrics import overlap_metrics

    return {name: overlap_metrics(np.isin(reference, labels), np.isin(prediction, labels))["dice"]
            for name, labels, _ in REGION_COLOURS}


def write_overview(images: Sequence[str | os.PathLike], channel_names: Sequence[str],
                   reference: str | os.PathLike, prediction: str | os.PathLike, output: str | os.PathLike,
                   fold_folder: Optional[str | os.PathLike] = None, title: str = "") -> Path:
    """Write the overview PNG of one case.

    Args:
        images: the case's channel files (``{case}_{i:04d}.nii.gz``), in channel order.
        channel_names: a name per channel (dataset.json's ``channel_names``), e.g. T1, T1Gd, T2, FLAIR.
        reference: the reference label map (nnU-Net's BraTS labels 1, 2, 3).
        prediction: the model's segmentation of the case (same labels).
        output: the PNG to write.
        fold_folder: the training run's fold folder; its ``checkpoint_final.pth`` gives the training curve
            (nnU-Net's per-epoch training loss, validation loss and pseudo-Dice). None leaves the panel out.
        title: figure title.

    Returns:
        The written path. The case's Dice per region (``evaluation.metrics.overlap_metrics``) is shown above the
        prediction.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if len(images) != len(channel_names):
        raise ValueError(f"{len(images)} image files but {len(channel_names)} channel names")
    arrays = [read_array(p).astype(np.float32) for p in images]
    ref, pred = read_array(reference), read_array(prediction)
    if ref.shape != pred.shape or ref.shape != arrays[0].shape:
        raise ValueError(f"reference {ref.shape}, prediction {pred.shape} and images {arrays[0].shape} differ in shape")
    z = tumour_slice(ref)
    background = arrays[list(channel_names).index("FLAIR")] if "FLAIR" in channel_names else arrays[0]

    n_top = len(arrays)
    fig, axes = plt.subplots(2, max(n_top, 3), figsize=(3.0 * max(n_top, 3), 6.4))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, arr, name in zip(axes[0], arrays, channel_names):
        ax.imshow(arr[z], cmap="gray")
        ax.set_title(name)
    axes[1, 0].imshow(overlay(background[z], ref[z]))
    axes[1, 0].set_title("reference")
    axes[1, 1].imshow(overlay(background[z], pred[z]))
    scores = "  ".join(f"{k} {v:.2f}" for k, v in case_dice(ref, pred).items())
    axes[1, 1].set_title(f"prediction\nDice {scores}", fontsize=10)
    axes[1, 1].legend(handles=[Patch(color=c, label=n) for n, _, c in REGION_COLOURS], loc="lower right",
                      fontsize=7, framealpha=0.7)
    if fold_folder is not None:
        _plot_curve(axes[1, 2], Path(fold_folder))
    if title:
        fig.suptitle(f"{title} (axial slice {z})")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=90)
    plt.close(fig)
    return output


def _plot_curve(ax, fold_folder: Path) -> None:
    from nnunetv2_ext.proxy.training_report import training_curves

    curves = training_curves([("run", fold_folder)]).get("run")
    if not curves:
        raise FileNotFoundError(f"no checkpoint_final.pth with nnU-Net's training log in {fold_folder}")
    ax.axis("on")
    epochs = np.arange(1, len(curves["train_losses"]) + 1)
    ax.plot(epochs, curves["train_losses"], label="train loss")
    if "val_losses" in curves:
        ax.plot(epochs, curves["val_losses"], label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (Dice + CE)")
    if "mean_fg_dice" in curves:
        twin = ax.twinx()
        twin.plot(epochs, curves["mean_fg_dice"], color="tab:green", label="pseudo-Dice")
        twin.set_ylim(0, 1)
        twin.set_ylabel("pseudo-Dice")
        twin.legend(loc="center right", fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("training")


def write_overview_from_folders(images_dir: str | os.PathLike, ref_dir: str | os.PathLike,
                                pred_dir: str | os.PathLike, model_folder: str | os.PathLike,
                                output: str | os.PathLike, case: Optional[str] = None, fold: str | int = 0,
                                overwrite: bool = False) -> Path:
    """``write_overview`` for one case of nnU-Net folders: images ``{case}_{i:04d}``, references and predictions
    ``{case}`` (file ending from the model's dataset.json), the channel names from the model folder's dataset.json
    and the curve from its ``fold_{fold}``. ``case`` None takes the first prediction (sorted)."""
    from nnunetv2_ext.dataset_json import channel_names
    from nnunetv2_ext.io_utils import load_json

    output, model_folder = Path(output), Path(model_folder)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; rerun with --overwrite to replace it")
    if not (model_folder / "dataset.json").is_file():
        raise FileNotFoundError(f"{model_folder} holds no dataset.json: give the model folder "
                                f"($nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>) with -m")
    dataset_json = load_json(model_folder / "dataset.json")
    ending, names = dataset_json["file_ending"], channel_names(dataset_json)
    if case is None:
        cases = sorted(p.name[:-len(ending)] for p in Path(pred_dir).glob(f"*{ending}"))
        if not cases:
            raise FileNotFoundError(f"no {ending} predictions in {pred_dir} (--pred)")
        case = cases[0]
    images = [Path(images_dir) / f"{case}_{i:04d}{ending}" for i in range(len(names))]
    paths = [*images, Path(ref_dir) / f"{case}{ending}", Path(pred_dir) / f"{case}{ending}"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"case {case}: missing {', '.join(missing)}")
    if not (model_folder / f"fold_{fold}" / "checkpoint_final.pth").is_file():
        raise FileNotFoundError(f"{model_folder / f'fold_{fold}'} holds no checkpoint_final.pth (the training curve): "
                                f"let the training finish, or choose the fold with -f")
    return write_overview(images, names, paths[-2], paths[-1], output, model_folder / f"fold_{fold}",
                          title=f"{model_folder.name.split('__')[0]}, case {case}")
