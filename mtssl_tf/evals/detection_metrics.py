"""PASCAL VOC 2007 detection metrics (paper section 5, the VOC07 mAP column), in plain numpy.

Our own code, written to give the numbers of the official VOC2007 devkit (`VOCevaldet.m`), with
the VOC2010+ area metric (`VOCap.m`) beside it. Inputs are plain arrays, one dict per image:

  ground truth: {"boxes": float [N, 4], "classes": int [N], "difficult": bool [N] (optional,
                 all False when absent)}
  detections:   {"boxes": float [D, 4], "classes": int [D], "scores": float [D]}

Conventions:
- Boxes are (ymin, xmin, ymax, xmax) in absolute pixel coordinates; classes are 0-based (the
  devkit's order is `VOC_CLASSES`). With `pixel_inclusive=True` (the default, as in the devkit)
  a box covers the pixels ymin..ymax inclusive, so its height is ymax - ymin + 1, and the same
  +1 enters the intersection; this matters for small boxes only. `pixel_inclusive=False` treats
  coordinates as continuous (height ymax - ymin), which is the one to use for normalized boxes.
  TFDS `voc/2007` stores the devkit's 1-based pixel coordinates divided by the image size, so
  multiplying its boxes by (height, width, height, width) gives devkit boxes back exactly.
- Matching, for each class, as in the devkit: detections over all images are sorted by
  descending score (a stable sort, so ties keep the order image by image, and within an image
  the given order). Each detection takes, among all ground-truth boxes of its class in its image,
  the one of highest IoU (the first one on ties), whether or not that box is already matched; the
  devkit does not fall back to the next-best unmatched box (COCO does). If that IoU is below the
  threshold the detection is a false positive. Otherwise: if the box is difficult the detection
  is ignored (neither true nor false positive, and the box stays free for more ignored
  detections); if the box is already matched it is a false positive (a duplicate); else it is a
  true positive and the box is matched.
- Positives are the non-difficult boxes: difficult boxes that nobody detects are not misses.
- AP, from precision = TP / (TP + FP) and recall = TP / positives after each counted detection:
  "ap_11point" (VOC2007) is the mean over t = 0, 0.1, ..., 1 of the best precision at recall
  >= t (0 where recall never reaches t); "ap_area" (VOC2010+) is the area under the precision
  envelope (the precision made monotone by taking the best precision at any higher recall).
  The thresholds are exactly k / 10. The devkit's `0:0.1:1` (and `np.arange(0, 1.1, 0.1)` in
  Python ports) holds 0.30000000000000004, so a recall of exactly 0.3 (3 of 10 positives) misses
  that point there by float rounding; we count it, as the definition says.
- A class with no positives has AP NaN and is left out of the means; it is not scored 0.
"""

import numpy as np

# The 20 classes in the devkit's order (also TFDS `voc/2007`'s label order).
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")

# Recall thresholds of the VOC2007 11-point AP, exactly k / 10 (see the module docstring).
_RECALL_THRESHOLDS = np.arange(11) / 10.0


def box_iou(boxes_a, boxes_b, pixel_inclusive=True):
  """Intersection over union of every box in `boxes_a` with every box in `boxes_b`.

  Args:
    boxes_a: float [A, 4], (ymin, xmin, ymax, xmax).
    boxes_b: float [B, 4], same layout.
    pixel_inclusive: if True, sizes are max - min + 1 (the VOC devkit's pixel convention).

  Returns:
    float64 [A, B]; 0 where the boxes do not overlap.
  """
  a = np.asarray(boxes_a, np.float64).reshape(-1, 4)[:, None, :]
  b = np.asarray(boxes_b, np.float64).reshape(-1, 4)[None, :, :]
  extra = 1.0 if pixel_inclusive else 0.0
  ih = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + extra
  iw = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + extra
  overlaps = (ih > 0) & (iw > 0)
  intersection = np.where(overlaps, ih * iw, 0.0)
  area_a = (a[..., 2] - a[..., 0] + extra) * (a[..., 3] - a[..., 1] + extra)
  area_b = (b[..., 2] - b[..., 0] + extra) * (b[..., 3] - b[..., 1] + extra)
  union = area_a + area_b - intersection
  return np.divide(intersection, union, out=np.zeros_like(intersection), where=overlaps)


def average_precision_11point(precision, recall):
  """VOC2007 AP: mean over recall thresholds 0, 0.1, ..., 1 of the best precision there.

  Args:
    precision: float [K], after each counted detection in score order.
    recall: float [K], likewise (non-decreasing).

  Returns:
    A float in [0, 1]; 0 for empty curves.
  """
  precision, recall = np.asarray(precision, np.float64), np.asarray(recall, np.float64)
  reached = recall[None, :] >= _RECALL_THRESHOLDS[:, None]
  best = np.max(np.where(reached, precision[None, :], 0.0), axis=1, initial=0.0)
  return float(np.mean(best))


def average_precision_area(precision, recall):
  """VOC2010+ AP: area under the precision envelope (`VOCap.m`).

  Args:
    precision: float [K], after each counted detection in score order.
    recall: float [K], likewise (non-decreasing).

  Returns:
    A float in [0, 1]; 0 for empty curves.
  """
  mrec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
  mpre = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
  envelope = np.maximum.accumulate(mpre[::-1])[::-1]
  steps = np.flatnonzero(mrec[1:] != mrec[:-1])
  return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def evaluate_detections(ground_truth, detections, num_classes, iou_threshold=0.5,
                        class_names=None, pixel_inclusive=True):
  """Per-class AP and mean AP over a test set, VOC2007-devkit style (see module docstring).

  Args:
    ground_truth: list, one dict per image: "boxes" float [N, 4] (ymin, xmin, ymax, xmax) in
      pixels, "classes" int [N] in [0, num_classes), "difficult" bool [N] (optional).
    detections: list of the same length: "boxes" float [D, 4], "classes" int [D], "scores"
      float [D].
    num_classes: number of classes.
    iou_threshold: a detection needs IoU >= this with a box to match it; in (0, 1].
    class_names: optional sequence of `num_classes` names; default "class_0", "class_1", ...
    pixel_inclusive: use the devkit's +1 pixel convention in areas and intersections.

  Returns:
    A dict: "class_names" list [C]; "ap_11point", "ap_area" float64 [C] (NaN for classes
    without positives); "num_positives" int64 [C] (non-difficult boxes); "num_detections" int64
    [C]; "map_11point", "map_area" floats, the means over classes with positives (NaN if none).

  Raises:
    ValueError: on mismatched list lengths, bad shapes or dtypes, non-finite or inverted boxes,
      class ids out of range, a bad threshold or a wrong number of class names.
  """
  num_classes, class_names = _check_classes(num_classes, class_names)
  if not 0.0 < iou_threshold <= 1.0:
    raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
  ground_truth, detections = _check_inputs(ground_truth, detections, num_classes)
  ap_11point = np.full(num_classes, np.nan)
  ap_area = np.full(num_classes, np.nan)
  num_positives = np.zeros(num_classes, np.int64)
  num_detections = np.zeros(num_classes, np.int64)
  for c in range(num_classes):
    is_tp, num_positives[c], num_detections[c] = _match_class(
        ground_truth, detections, c, iou_threshold, pixel_inclusive)
    if num_positives[c] == 0:
      continue
    tp = np.cumsum(is_tp)
    precision = tp / np.arange(1, len(is_tp) + 1)
    recall = tp / num_positives[c]
    ap_11point[c] = average_precision_11point(precision, recall)
    ap_area[c] = average_precision_area(precision, recall)
  scored = num_positives > 0
  return {
      "class_names": class_names,
      "ap_11point": ap_11point,
      "ap_area": ap_area,
      "num_positives": num_positives,
      "num_detections": num_detections,
      "map_11point": float(np.mean(ap_11point[scored])) if scored.any() else float("nan"),
      "map_area": float(np.mean(ap_area[scored])) if scored.any() else float("nan"),
  }


def voc_metrics(ground_truth, detections, num_classes, class_names=None, pixel_inclusive=True):
  """The JSON-ready dict the VOC evaluation writes: mAP at IoU 0.5 and 0.75, both AP kinds.

  "map50_voc07" is the paper's number (VOC2007 11-point AP at IoU 0.5). Arguments as for
  `evaluate_detections`.

  Returns:
    {"map50_voc07", "map50_area", "map75_voc07", "map75_area": float or None, "num_images":
    int, "per_class": {name: {"ap50_voc07", "ap50_area", "ap75_voc07", "ap75_area": float or
    None, "num_positives": int}}}; None stands for NaN (no positives), which JSON lacks.
  """
  at = {threshold: evaluate_detections(ground_truth, detections, num_classes, threshold,
                                       class_names, pixel_inclusive)
        for threshold in (0.5, 0.75)}
  metrics = {"num_images": len(ground_truth)}
  per_class = {name: {"num_positives": int(at[0.5]["num_positives"][c])}
               for c, name in enumerate(at[0.5]["class_names"])}
  for threshold, tag in ((0.5, "50"), (0.75, "75")):
    result = at[threshold]
    metrics[f"map{tag}_voc07"] = _json_float(result["map_11point"])
    metrics[f"map{tag}_area"] = _json_float(result["map_area"])
    for c, name in enumerate(result["class_names"]):
      per_class[name][f"ap{tag}_voc07"] = _json_float(result["ap_11point"][c])
      per_class[name][f"ap{tag}_area"] = _json_float(result["ap_area"][c])
  metrics["per_class"] = per_class
  return metrics


def _json_float(value):
  return None if np.isnan(value) else float(value)


def _match_class(ground_truth, detections, c, iou_threshold, pixel_inclusive):
  """Marks class c's counted detections, in score order, as true (1) or false (0) positives.

  Returns:
    (is_tp int [K], number of positives, number of detections of class c); K excludes the
    detections ignored for hitting a difficult box.
  """
  scores, gt_ids, best_iou, best_difficult = [], [], [], []
  num_positives, gt_offset = 0, 0
  for gt, det in zip(ground_truth, detections):
    gt_mask, det_mask = gt["classes"] == c, det["classes"] == c
    num_gt, num_det = int(gt_mask.sum()), int(det_mask.sum())
    num_positives += int(np.sum(~gt["difficult"][gt_mask]))
    if num_det:
      scores.append(det["scores"][det_mask])
      if num_gt:
        iou = box_iou(det["boxes"][det_mask], gt["boxes"][gt_mask], pixel_inclusive)
        best = np.argmax(iou, axis=1)  # The first box on ties, as the devkit's strict `>`.
        best_iou.append(iou[np.arange(num_det), best])
        best_difficult.append(gt["difficult"][gt_mask][best])
        gt_ids.append(gt_offset + best)
      else:
        best_iou.append(np.zeros(num_det))
        best_difficult.append(np.zeros(num_det, bool))
        gt_ids.append(np.full(num_det, -1))
    gt_offset += num_gt
  if not scores:
    return np.zeros(0, np.int64), num_positives, 0
  order = np.argsort(-np.concatenate(scores), kind="stable")
  hit = np.concatenate(best_iou)[order] >= iou_threshold
  difficult = np.concatenate(best_difficult)[order]
  gt_ids = np.concatenate(gt_ids)[order]
  # The best box depends on the detection alone, so the only order-dependent part is which
  # detection claims a box first: the highest-scoring one (np.unique gives first positions).
  claims = np.flatnonzero(hit & ~difficult)
  _, first = np.unique(gt_ids[claims], return_index=True)
  is_tp = np.zeros(len(order), np.int64)
  is_tp[claims[first]] = 1
  counted = ~(hit & difficult)
  return is_tp[counted], num_positives, len(order)


def _check_classes(num_classes, class_names):
  """Validates the class count and names; returns (num_classes, list of names)."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
    raise ValueError(f"num_classes must be an int, got {num_classes!r}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive, got {num_classes}")
  if class_names is None:
    return int(num_classes), [f"class_{c}" for c in range(num_classes)]
  class_names = [str(name) for name in class_names]
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
  if len(set(class_names)) != num_classes:
    raise ValueError(f"class names are not unique: {class_names}")
  return int(num_classes), class_names


def _check_inputs(ground_truth, detections, num_classes):
  """Validates the per-image dicts; returns them as lists of dicts of numpy arrays."""
  if len(ground_truth) != len(detections):
    raise ValueError(f"ground truth has {len(ground_truth)} images, detections "
                     f"{len(detections)}")
  gts, dets = [], []
  for i, (gt, det) in enumerate(zip(ground_truth, detections)):
    boxes, classes = _check_boxes_and_classes(gt, f"ground_truth[{i}]", num_classes)
    difficult = np.asarray(gt.get("difficult", np.zeros(len(classes), bool)))
    if difficult.shape != classes.shape:
      raise ValueError(f"ground_truth[{i}]['difficult'] has shape {difficult.shape}, expected "
                       f"{classes.shape}")
    if difficult.dtype != bool:
      if difficult.size and not np.isin(difficult, (0, 1)).all():
        raise ValueError(f"ground_truth[{i}]['difficult'] must be boolean")
      difficult = difficult.astype(bool)
    gts.append({"boxes": boxes, "classes": classes, "difficult": difficult})
    boxes, classes = _check_boxes_and_classes(det, f"detections[{i}]", num_classes)
    scores = np.asarray(_get(det, "scores", f"detections[{i}]"), np.float64)
    if scores.shape != classes.shape:
      raise ValueError(f"detections[{i}]['scores'] has shape {scores.shape}, expected "
                       f"{classes.shape}")
    if not np.isfinite(scores).all():
      raise ValueError(f"detections[{i}]['scores'] has non-finite values")
    dets.append({"boxes": boxes, "classes": classes, "scores": scores})
  return gts, dets


def _get(item, key, where):
  if not isinstance(item, dict) or key not in item:
    raise ValueError(f"{where} must be a dict with key {key!r}")
  return item[key]


def _check_boxes_and_classes(item, where, num_classes):
  """Returns float64 boxes [N, 4] and int64 classes [N] of one image, validated."""
  boxes = np.asarray(_get(item, "boxes", where), np.float64)
  classes = np.asarray(_get(item, "classes", where))
  if boxes.size == 0:
    boxes = boxes.reshape(0, 4)  # Accept [] for an image without boxes.
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{where}['boxes'] must have shape [N, 4], got {boxes.shape}")
  if classes.shape != (len(boxes),):
    raise ValueError(f"{where}['classes'] has shape {classes.shape}, expected ({len(boxes)},)")
  if classes.size and not np.issubdtype(classes.dtype, np.integer):
    raise ValueError(f"{where}['classes'] must be integers, got {classes.dtype}")
  classes = classes.astype(np.int64)
  if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
    raise ValueError(f"{where}['classes'] must be in [0, {num_classes}), got "
                     f"{classes.min()}..{classes.max()}")
  if not np.isfinite(boxes).all():
    raise ValueError(f"{where}['boxes'] has non-finite values")
  if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
    raise ValueError(f"{where}['boxes'] must be (ymin, xmin, ymax, xmax) with max >= min")
  return boxes, classes
