"""CAMELYON16's evaluation: evaluation masks and ITCs (``masks``), which detections hit which
lesion and the FROC curve (``froc``), the slide ROC AUC and bootstrap intervals (``auc``), one
evaluation of a set of slides (``evaluation``) and its files (``report``: ``evaluation.json``,
``per_slide.csv``, ``froc.png``, ``roc.png``). Import from the modules."""
