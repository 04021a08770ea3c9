"""CAMELYON17's evaluation: metastasis categories by the longest lesion diameter and pN
categories ("pN stages" in the AJCC manual) of patients (``categories``), the confusion matrix
and quadratic weighted kappa (``kappa``), categories of predicted against annotated lesions
(``evaluation``) and their files (``report``: ``staging.json``, ``staging.png``). Import from
the modules."""
