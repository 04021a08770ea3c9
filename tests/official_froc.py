"""Test oracle: the official CAMELYON16 FROC evaluation, restated step by step.

Source: ``Evaluation_FROC.py`` by B. Ehteshami Bejnordi (2016), "Evaluation code for the
Camelyon16 challenge on cancer metastases detection", as kept in baidu-research/NCRF
``wsi/bin/Evaluation_FROC.py``: functions ``computeEvaluationMask``, ``computeITCList``,
``readCSVContent``, ``compute_FP_TP_Probs``, ``computeFROC`` and the ``__main__`` block.

The same operations in the same order on the same types (Python lists of floats, a
float32 ``TP_probs`` array, ``sorted(set(...))[1:]`` thresholds, an object array of
per-case results), so that ``vistumor.evaluate`` can be checked against it to the bit.
Changed only so that it runs on current libraries and in tests: ``np.object`` is
``object`` (removed in NumPy 1.24); ``nd.morphology.binary_fill_holes`` and
``major_axis_length`` are called by their current names ``nd.binary_fill_holes`` and
``axis_major_length`` (same functions); the mask can be passed as an array; the
detection and false-positive summaries, the plot and the prints are left out; the
``__main__`` block is :func:`evaluate_folders`, returning the curve and the score.
"""

from __future__ import annotations

import os

import numpy as np
import openslide
from scipy import ndimage as nd
from skimage import measure

EVALUATION_MASK_LEVEL = 5
L0_RESOLUTION = 0.243
EVAL_THRESHOLD = [0.25, 0.5, 1, 2, 4, 8]


def evaluation_mask_from_pixels(pixelarray, resolution=L0_RESOLUTION, level=EVALUATION_MASK_LEVEL):
    """computeEvaluationMask after its read_region: ``pixelarray`` is the (h, w, channels) uint8
    level-``level`` image of the mask."""
    distance = nd.distance_transform_edt(255 - pixelarray[:, :, 0])
    threshold = 75 / (resolution * pow(2, level) * 2)
    binary = distance < threshold
    filled_image = nd.binary_fill_holes(binary)
    return measure.label(filled_image, connectivity=2)


def computeEvaluationMask(maskDIR, resolution, level):
    slide = openslide.open_slide(maskDIR)
    dims = slide.level_dimensions[level]
    pixelarray = np.array(slide.read_region((0, 0), level, dims))
    return evaluation_mask_from_pixels(pixelarray, resolution, level)


def computeITCList(evaluation_mask, resolution, level):
    max_label = np.amax(evaluation_mask)
    properties = measure.regionprops(evaluation_mask)
    itc = []
    threshold = 275 / (resolution * pow(2, level))
    for i in range(0, max_label):
        if properties[i].axis_major_length < threshold:
            itc.append(i + 1)
    return itc


def readCSVContent(csvDIR):
    xcorr, ycorr, probs = ([] for _ in range(3))
    lines = open(csvDIR).readlines()
    for i in range(len(lines)):
        elems = lines[i].rstrip().split(",")
        probs.append(float(elems[0]))
        xcorr.append(int(elems[1]))
        ycorr.append(int(elems[2]))
    return probs, xcorr, ycorr


def compute_FP_TP_Probs(Ycorr, Xcorr, Probs, is_tumor, evaluation_mask, Isolated_Tumor_Cells, level):
    """Returns FP_probs (list), TP_probs (float32 array, one per label) and the number of non-ITC tumors."""
    max_label = np.amax(evaluation_mask)
    fp_probs = []
    tp_probs = np.zeros((max_label,), dtype=np.float32)
    if is_tumor:
        for i in range(0, len(Xcorr)):
            hit = evaluation_mask[int(Ycorr[i] / pow(2, level)), int(Xcorr[i] / pow(2, level))]
            if hit == 0:
                fp_probs.append(Probs[i])
            elif hit not in Isolated_Tumor_Cells:
                if Probs[i] > tp_probs[hit - 1]:
                    tp_probs[hit - 1] = Probs[i]
    else:
        for i in range(0, len(Xcorr)):
            fp_probs.append(Probs[i])
    num_of_tumors = max_label - len(Isolated_Tumor_Cells)
    return fp_probs, tp_probs, num_of_tumors


def computeFROC(FROC_data):
    unlisted_fps = [item for sublist in FROC_data[1] for item in sublist]
    unlisted_tps = [item for sublist in FROC_data[2] for item in sublist]
    total_fps, total_tps = [], []
    all_probs = sorted(set(unlisted_fps + unlisted_tps))
    for thresh in all_probs[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= thresh).sum())
        total_tps.append((np.asarray(unlisted_tps) >= thresh).sum())
    total_fps.append(0)
    total_tps.append(0)
    total_fps = np.asarray(total_fps) / float(len(FROC_data[0]))
    total_sensitivity = np.asarray(total_tps) / float(sum(FROC_data[3]))
    return total_fps, total_sensitivity


def froc_score(total_fps, total_sensitivity):
    """The __main__ block's "Avg Sensivity"."""
    eval_tps = np.interp(EVAL_THRESHOLD, total_fps[::-1], total_sensitivity[::-1])
    return np.mean(eval_tps)


def froc_of_cases(cases):
    """The __main__ block on in-memory cases: ``[(name, probs, xs, ys, mask or None), ...]``
    with ``mask`` the level-5 uint8 (h, w, channels) image of a tumor slide."""
    froc_data = np.zeros((4, len(cases)), dtype=object)
    for n, (name, probs, xs, ys, pixels) in enumerate(cases):
        is_tumor = pixels is not None
        if is_tumor:
            evaluation_mask = evaluation_mask_from_pixels(pixels, L0_RESOLUTION, EVALUATION_MASK_LEVEL)
            itc_labels = computeITCList(evaluation_mask, L0_RESOLUTION, EVALUATION_MASK_LEVEL)
        else:
            evaluation_mask = 0
            itc_labels = []
        froc_data[0][n] = name
        froc_data[1][n], froc_data[2][n], froc_data[3][n] = compute_FP_TP_Probs(
            ys, xs, probs, is_tumor, evaluation_mask, itc_labels, EVALUATION_MASK_LEVEL
        )
    total_fps, total_sensitivity = computeFROC(froc_data)
    return total_fps, total_sensitivity, froc_score(total_fps, total_sensitivity)


def evaluate_folders(mask_folder, result_folder):
    """The __main__ block: ``<mask_folder>/<case>.tif`` masks, ``<result_folder>/<case>.csv`` results."""
    result_files = [each for each in os.listdir(result_folder) if each.endswith(".csv")]
    ground_truth = {each[0:8] for each in os.listdir(mask_folder) if each.endswith(".tif")}
    froc_data = np.zeros((4, len(result_files)), dtype=object)
    for n, case in enumerate(result_files):
        probs, xs, ys = readCSVContent(os.path.join(result_folder, case))
        is_tumor = case[0:-4] in ground_truth
        if is_tumor:
            mask_path = os.path.join(mask_folder, case[0:-4]) + ".tif"
            evaluation_mask = computeEvaluationMask(mask_path, L0_RESOLUTION, EVALUATION_MASK_LEVEL)
            itc_labels = computeITCList(evaluation_mask, L0_RESOLUTION, EVALUATION_MASK_LEVEL)
        else:
            evaluation_mask = 0
            itc_labels = []
        froc_data[0][n] = case
        froc_data[1][n], froc_data[2][n], froc_data[3][n] = compute_FP_TP_Probs(
            ys, xs, probs, is_tumor, evaluation_mask, itc_labels, EVALUATION_MASK_LEVEL
        )
    total_fps, total_sensitivity = computeFROC(froc_data)
    return total_fps, total_sensitivity, froc_score(total_fps, total_sensitivity)
