"""Measuring a face model: identification, verification (ROC, EER), open set, and the threshold's calibration.

metrics (accuracy, confusion, ROC/EER, open-set rates), calibration (the recogniser's threshold and
its expected false-accept and false-reject rates).
"""
