"""Tests of the VOC detection metrics: hand-computed APs, devkit matching rules, a reference."""

from fractions import Fraction

import numpy as np
import pytest

from mtssl_tf.evals import detection_metrics as dm

BOX = [10, 10, 59, 59]  # 50 x 50 pixels with the devkit's +1.
OTHER = [100, 100, 149, 149]  # Disjoint from BOX.


def _gt(boxes, classes=None, difficult=None):
  classes = [0] * len(boxes) if classes is None else classes
  difficult = [False] * len(boxes) if difficult is None else difficult
  return {"boxes": np.array(boxes, float).reshape(-1, 4), "classes": np.array(classes, int),
          "difficult": np.array(difficult, bool)}


def _det(boxes, scores, classes=None):
  classes = [0] * len(boxes) if classes is None else classes
  return {"boxes": np.array(boxes, float).reshape(-1, 4), "classes": np.array(classes, int),
          "scores": np.array(scores, float)}


def _aps(gts, dets, num_classes=1, **kwargs):
  result = dm.evaluate_detections(gts, dets, num_classes, **kwargs)
  return result["ap_11point"][0], result["ap_area"][0]


def test_box_iou_and_the_plus_one_pixel_convention():
  np.testing.assert_allclose(dm.box_iou([BOX], [BOX]), [[1.0]])
  np.testing.assert_allclose(dm.box_iou([BOX], [OTHER, BOX]), [[0.0, 1.0]])
  # Touching corners share one pixel with +1: 1 / (4 + 4 - 1); none without it.
  assert dm.box_iou([[0, 0, 1, 1]], [[1, 1, 2, 2]])[0, 0] == pytest.approx(1 / 7)
  assert dm.box_iou([[0, 0, 1, 1]], [[1, 1, 2, 2]], pixel_inclusive=False)[0, 0] == 0.0
  # A single pixel is a box of area 1 with +1.
  assert dm.box_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]])[0, 0] == 1.0
  assert dm.box_iou(np.zeros((0, 4)), [BOX]).shape == (0, 1)


def test_a_perfect_detector_scores_one():
  gts = [_gt([BOX, OTHER]), _gt([OTHER])]
  dets = [_det([OTHER, BOX], [0.3, 0.9]), _det([OTHER], [0.5])]
  assert _aps(gts, dets) == (1.0, 1.0)


def test_11point_and_area_differ_by_hand():
  # Two positives: TP (recall 0.5, precision 1), FP, FP, TP (recall 1, precision 0.5).
  gts = [_gt([BOX]), _gt([BOX])]
  dets = [_det([BOX, OTHER, OTHER], [0.9, 0.8, 0.7]), _det([BOX], [0.6])]
  ap_11, ap_area = _aps(gts, dets)
  assert ap_11 == pytest.approx((6 * 1.0 + 5 * 0.5) / 11, abs=1e-12)
  assert ap_area == pytest.approx(0.5 * 1.0 + 0.5 * 0.5, abs=1e-12)


def test_a_duplicate_is_a_false_positive():
  gts = [_gt([BOX]), _gt([BOX])]
  # A duplicate below the only other true positive costs nothing: precision 1 up to recall 1.
  assert _aps(gts, [_det([BOX, BOX], [0.9, 0.5]), _det([BOX], [0.7])]) == (1.0, 1.0)
  # Above it: TP (r 0.5, p 1), duplicate FP (r 0.5, p 1/2), TP (r 1, p 2/3).
  ap_11, ap_area = _aps(gts, [_det([BOX, BOX], [0.9, 0.8]), _det([BOX], [0.7])])
  assert ap_11 == pytest.approx((6 + 5 * 2 / 3) / 11, abs=1e-12)
  assert ap_area == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_the_best_box_is_taken_even_when_already_matched():
  # As in the devkit (not COCO): the second detection overlaps the matched box most (0.82)
  # and the free box enough (0.54), yet it is a duplicate, not a match for the free box.
  left, right = [0, 0, 99, 99], [0, 40, 99, 139]
  second = [0, 10, 99, 109]
  np.testing.assert_allclose(dm.box_iou([second], [left, right]), [[90 / 110, 70 / 130]])
  gts = [_gt([left, right])]
  ap_11, _ = _aps(gts, [_det([left, second], [0.9, 0.8])])
  assert ap_11 == pytest.approx(6 / 11, abs=1e-12)  # Recall stays 0.5 at precision 1.


def test_difficult_boxes_are_neither_hits_nor_misses():
  plain = [_gt([BOX, OTHER], difficult=[False, True])]
  # Not detecting the difficult box costs nothing; there is one positive.
  result = dm.evaluate_detections(plain, [_det([BOX], [0.5])], 1)
  assert result["num_positives"][0] == 1 and result["ap_11point"][0] == 1.0
  # Detections of the difficult box are ignored, even above the true positive and repeated.
  with_hits = [_det([OTHER, BOX, OTHER], [0.95, 0.9, 0.85])]
  assert _aps(plain, with_hits) == (1.0, 1.0)
  # With an FP first, the ignored detections leave the curve as it was without them.
  fp_first = [_det([[200, 200, 220, 220], OTHER, BOX, OTHER], [0.99, 0.95, 0.9, 0.85])]
  without = [_det([[200, 200, 220, 220], BOX], [0.99, 0.9])]
  assert _aps(plain, fp_first) == _aps(plain, without) == (pytest.approx(0.5), 0.5)


def test_classes_without_positives_are_left_out_of_the_mean():
  gts = [_gt([BOX, OTHER], classes=[0, 2], difficult=[False, True])]
  dets = [_det([BOX, BOX, OTHER], [0.9, 0.8, 0.7], classes=[0, 1, 2])]
  result = dm.evaluate_detections(gts, dets, 3, class_names=["a", "b", "c"])
  np.testing.assert_array_equal(result["num_positives"], [1, 0, 0])
  np.testing.assert_array_equal(result["num_detections"], [1, 1, 1])
  assert result["ap_11point"][0] == 1.0 and np.isnan(result["ap_11point"][1:]).all()
  assert result["map_11point"] == 1.0 and result["map_area"] == 1.0
  # A class with positives but no detections scores 0 and counts.
  result = dm.evaluate_detections([_gt([BOX, BOX], classes=[0, 1])], [_det([BOX], [0.9])], 2)
  np.testing.assert_array_equal(result["ap_area"], [1.0, 0.0])
  assert result["map_11point"] == 0.5
  # No positives anywhere: the mean is NaN.
  assert np.isnan(dm.evaluate_detections([_gt([])], [_det([BOX], [0.9])], 1)["map_area"])


def test_a_loose_match_fails_at_iou_075():
  gt, loose = [0, 0, 99, 99], [0, 0, 99, 59]  # IoU 6000 / 10000.
  assert dm.box_iou([loose], [gt])[0, 0] == pytest.approx(0.6)
  gts, dets = [_gt([gt])], [_det([loose], [0.9])]
  assert _aps(gts, dets, iou_threshold=0.5) == (1.0, 1.0)
  assert _aps(gts, dets, iou_threshold=0.75) == (0.0, 0.0)


def test_the_plus_one_convention_decides_tiny_matches():
  gt, det = [0, 0, 2, 3], [0, 0, 2, 1]  # IoU 6 / 12 with +1, 2 / 6 without.
  gts, dets = [_gt([gt])], [_det([det], [0.9])]
  assert _aps(gts, dets) == (1.0, 1.0)
  assert _aps(gts, dets, pixel_inclusive=False) == (0.0, 0.0)


def test_score_ties_keep_image_order_and_recall_point_three_counts():
  gts = [_gt([]), _gt([BOX])]
  # Equal scores: image 0's false positive comes first, so precision is 1/2 at recall 1.
  assert _aps(gts, [_det([BOX], [0.5]), _det([BOX], [0.5])]) == (0.5, 0.5)
  assert _aps(gts[::-1], [_det([BOX], [0.5]), _det([BOX], [0.5])]) == (1.0, 1.0)
  # 3 of 10 positives found: recall is exactly 0.3, so t = 0.3 counts (4 of 11 points).
  gts = [_gt([BOX]) for _ in range(10)]
  dets = [_det([BOX], [0.9])] * 3 + [_det([], [])] * 7
  assert _aps(gts, dets)[0] == pytest.approx(4 / 11, abs=1e-12)


def test_voc_metrics_is_json_ready():
  gts = [_gt([[0, 0, 99, 99], BOX], classes=[0, 1])]
  dets = [_det([[0, 0, 99, 59]], [0.9])]  # IoU 0.6 for class 0; class 2 has no positives.
  metrics = dm.voc_metrics(gts, dets, 3, class_names=["cat", "dog", "cow"])
  assert metrics["map50_voc07"] == 0.5 and metrics["map50_area"] == 0.5
  assert metrics["map75_voc07"] == 0.0 and metrics["map75_area"] == 0.0
  assert metrics["num_images"] == 1
  assert metrics["per_class"]["cat"] == {"num_positives": 1, "ap50_voc07": 1.0,
                                         "ap50_area": 1.0, "ap75_voc07": 0.0, "ap75_area": 0.0}
  assert metrics["per_class"]["cow"]["ap50_voc07"] is None
  assert all(type(v) is float for k, v in metrics.items() if k.startswith("map"))
  assert len(dm.VOC_CLASSES) == 20


@pytest.mark.parametrize("gts,dets,num_classes,kwargs,message", [
    ([_gt([BOX])], [], 1, {}, "1 images, detections 0"),
    ([_gt([BOX])], [_det([BOX], [0.5], classes=[3])], 2, {}, r"must be in \[0, 2\)"),
    ([_gt([BOX], classes=[-1])], [_det([], [])], 2, {}, r"must be in \[0, 2\)"),
    ([{"boxes": np.zeros((1, 3)), "classes": [0]}], [_det([], [])], 1, {}, r"shape \[N, 4\]"),
    ([_gt([BOX])], [{"boxes": [BOX], "classes": [0], "scores": [1, 2]}], 1, {}, "'scores'"),
    ([_gt([BOX])], [{"boxes": [BOX], "classes": [0]}], 1, {}, "key 'scores'"),
    ([_gt([BOX])], [_det([BOX], [np.nan])], 1, {}, "non-finite"),
    ([_gt([[10, 10, 5, 20]])], [_det([], [])], 1, {}, "max >= min"),
    ([{"boxes": [BOX], "classes": [0.0]}], [_det([], [])], 1, {}, "must be integers"),
    ([{"boxes": [BOX], "classes": [0], "difficult": [1, 0]}], [_det([], [])], 1, {},
     "'difficult'"),
    ([_gt([BOX])], [_det([], [])], 0, {}, "num_classes must be positive"),
    ([_gt([BOX])], [_det([], [])], 1, {"class_names": ["a", "b"]}, "2 class names"),
    ([_gt([BOX])], [_det([], [])], 1, {"iou_threshold": 0.0}, "iou_threshold"),
])
def test_bad_inputs_raise(gts, dets, num_classes, kwargs, message):
  with pytest.raises(ValueError, match=message):
    dm.evaluate_detections(gts, dets, num_classes, **kwargs)


def _reference_aps(gts, dets, num_classes, iou_threshold, pixel_inclusive):
  """The devkit's loop, written out in exact rational arithmetic, one class at a time."""
  extra = 1 if pixel_inclusive else 0
  threshold = Fraction(iou_threshold).limit_denominator(1000)

  def overlap(a, b):
    a, b = [Fraction(int(v)) for v in a], [Fraction(int(v)) for v in b]
    ih = min(a[2], b[2]) - max(a[0], b[0]) + extra
    iw = min(a[3], b[3]) - max(a[1], b[1]) + extra
    if ih <= 0 or iw <= 0:
      return None
    area = lambda z: (z[2] - z[0] + extra) * (z[3] - z[1] + extra)
    return ih * iw / (area(a) + area(b) - ih * iw)

  results = []
  for c in range(num_classes):
    found = {}
    positives = sum(1 for gt in gts for k, d in zip(gt["classes"], gt["difficult"])
                    if k == c and not d)
    candidates = [(float(s), i, j) for i, det in enumerate(dets)
                  for j, (k, s) in enumerate(zip(det["classes"], det["scores"])) if k == c]
    candidates = sorted(candidates, key=lambda t: -t[0])  # Python's sort is stable.
    tp = fp = 0
    curve = []
    for _, i, j in candidates:
      best, best_k = None, None
      for k in range(len(gts[i]["classes"])):
        if gts[i]["classes"][k] != c:
          continue
        ov = overlap(dets[i]["boxes"][j], gts[i]["boxes"][k])
        if ov is not None and (best is None or ov > best):
          best, best_k = ov, k
      if best is not None and best >= threshold:
        if gts[i]["difficult"][best_k]:
          continue
        if (i, best_k) in found:
          fp += 1
        else:
          found[(i, best_k)] = True
          tp += 1
      else:
        fp += 1
      curve.append((Fraction(tp, positives) if positives else None, Fraction(tp, tp + fp)))
    if not positives:
      results.append((np.nan, np.nan))
      continue
    best_at = lambda r: max([p for rec, p in curve if rec >= r], default=Fraction(0))
    ap_11 = sum(best_at(Fraction(t, 10)) for t in range(11)) / 11
    # Area: each rise in recall, times the best precision at that recall or beyond.
    levels = sorted({rec for rec, _ in curve} - {0})
    ap_area = sum((hi - lo) * best_at(hi) for lo, hi in zip([Fraction(0)] + levels, levels))
    results.append((float(ap_11), float(ap_area)))
  return results


def _random_set(seed, num_images=20, num_classes=3):
  rng = np.random.RandomState(seed)
  gts, dets = [], []
  for _ in range(num_images):
    n = rng.randint(0, 5)
    corner = rng.randint(0, 60, size=(n, 2))
    size = rng.randint(4, 30, size=(n, 2))
    gt_boxes = np.concatenate([corner, corner + size], axis=1)
    gt_classes = rng.randint(0, num_classes, size=n)
    gts.append({"boxes": gt_boxes.astype(float), "classes": gt_classes,
                "difficult": rng.rand(n) < 0.2})
    # Jittered copies of the truth (some twice, some with a wrong class) and random boxes.
    copies = rng.randint(0, n, size=rng.randint(0, 2 * n + 1)) if n else np.zeros(0, int)
    jitter = rng.randint(-2, 3, size=(len(copies), 4))
    boxes = gt_boxes[copies] + jitter
    classes = np.where(rng.rand(len(copies)) < 0.15, rng.randint(0, num_classes, len(copies)),
                       gt_classes[copies])
    m = rng.randint(0, 4)
    corner = rng.randint(0, 60, size=(m, 2))
    noise = np.concatenate([corner, corner + rng.randint(1, 30, size=(m, 2))], axis=1)
    boxes = np.concatenate([boxes, noise]).reshape(-1, 4)
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                            np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
    classes = np.concatenate([classes, rng.randint(0, num_classes, size=m)]).astype(int)
    # Coarse scores, so that ties happen; copies of the truth tend to score higher.
    scores = np.round(0.6 * rng.rand(len(boxes)) + 0.4 * (np.arange(len(boxes)) < len(copies)), 1)
    dets.append({"boxes": boxes.astype(float), "classes": classes, "scores": scores})
  return gts, dets


@pytest.mark.parametrize("seed,iou_threshold,pixel_inclusive", [
    (0, 0.5, True), (1, 0.5, True), (2, 0.75, True), (3, 0.5, False), (4, 0.75, False)])
def test_matches_a_loop_reference_on_random_data(seed, iou_threshold, pixel_inclusive):
  gts, dets = _random_set(seed)
  result = dm.evaluate_detections(gts, dets, 3, iou_threshold=iou_threshold,
                                  pixel_inclusive=pixel_inclusive)
  expected = _reference_aps(gts, dets, 3, iou_threshold, pixel_inclusive)
  np.testing.assert_allclose(result["ap_11point"], [e[0] for e in expected], atol=1e-9)
  np.testing.assert_allclose(result["ap_area"], [e[1] for e in expected], atol=1e-9)
  # The data are not trivial: some AP strictly between 0 and 1.
  assert np.any((result["ap_area"] > 0.05) & (result["ap_area"] < 0.95))
