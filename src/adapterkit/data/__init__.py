"""Datasets for adapter training: bundled offline tasks and the user's own files.

Both paths return a :class:`TaskData` with fixed, seeded train/validation/test splits, so every
method in a comparison trains and is evaluated on exactly the same examples.
"""

from adapterkit.data.catalog import available_tasks, knowledge_tasks, load_task
from adapterkit.data.files import load_files
from adapterkit.data.task import Example, TaskData

__all__ = ["Example", "TaskData", "available_tasks", "knowledge_tasks", "load_files", "load_task"]
