"""detector: anomaly maps and scores (reconstruction error, encoder features) with per-class conformal thresholds.

Screening runs on onnxruntime + numpy (no torch): `aekit calibrate`, `aekit screen [--maps DIR]`,
`aekit bench-detect` (synthetic local defects), `aekit detector evaluate`, or the estimator
`aekit.detector.model.Detector` (fit, decision_function, predict, anomaly_maps, thresholds_).
Training per class (`aekit detector train-per-class`, defect-trained) uses torch.
"""
