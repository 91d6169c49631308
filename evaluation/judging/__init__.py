"""Judging: the stage that writes verdicts (rubrics, the judge panel, scripted judges, detectors, calibration)."""
