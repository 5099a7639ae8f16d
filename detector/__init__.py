"""detector: reconstruction-error anomaly detection with per-class conformal thresholds.

Screening runs on onnxruntime + numpy (no torch): `aekit calibrate`, `aekit screen`,
`aekit detector evaluate`, or the estimator `aekit.detector.model.Detector` (fit, decision_function,
predict, thresholds_). Training per class (`aekit detector train-per-class`) uses torch.
"""
