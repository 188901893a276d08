"""Pretrained real-music models whose weights ship inside PyPI packages, read without their frameworks.

* :mod:`ml.pretrained.tf_checkpoint`: a numpy reader of TensorFlow tensor-bundle checkpoints (also straight
  from a wheel file);
* :mod:`ml.pretrained.musicnn`: where the musicnn wheel lives, its integrity check, its weights and tags.

The wheels are fetched from PyPI at install time (``make pretrained``, part of ``make setup``); nothing is
downloaded at run time.
"""
