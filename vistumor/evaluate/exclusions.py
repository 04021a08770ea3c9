"""Which slides each task leaves out: the slide task (AUC) and the lesion task (FROC, and the
CAMELYON17 categories, which measure the same lesions)."""

from __future__ import annotations

from collections.abc import Iterable

from vistumor.errors import ConfigError

#: the slide task (AUC) and the lesion task (FROC)
AUC, FROC = "auc", "froc"
TASKS = (AUC, FROC)
#: NCRF README, "FROC evaluation": "Test_049 and Test_114 are excluded from the evaluation as noted by
#: the Camelyon16 organizers": test_049 (a duplicate slide) leaves both tasks, test_114 the lesion task
#: only (so the real test set has 129 slides for the AUC, 128 for the FROC). ``name:task`` names one task.
OFFICIAL_EXCLUDE = ("test_049", "test_114:froc")


def parse_exclude(entries: Iterable[str]) -> dict[str, set[str]]:
    """Lower-case slide names excluded from each task: ``name`` leaves both, ``name:auc`` or
    ``name:froc`` one."""
    excluded: dict[str, set[str]] = {task: set() for task in TASKS}
    for entry in entries:
        name, _, task = str(entry).partition(":")
        tasks = (task.strip().lower(),) if task else TASKS
        if not name.strip() or not set(tasks) <= set(TASKS):
            raise ConfigError(f"exclusion {entry!r}: expected 'slide' or 'slide:task', task one of {TASKS}")
        for t in tasks:
            excluded[t].add(name.strip().lower())
    return excluded
