"""Training and evaluating adapters: data batching, the trainer, checkpoints, results, reports.

Typical use::

    from adapterkit import AdapterModel
    from adapterkit.data import load_task
    from adapterkit.training import Trainer, TrainingConfig, add_task_adapter

    model = AdapterModel.from_pretrained("minilm")
    task = load_task("rotten_tomatoes", max_examples=2000)
    add_task_adapter(model, "rt", "houlsby", task)
    result = Trainer(model, "rt", task, TrainingConfig(epochs=1, output_dir="runs/rt")).train()
    print(result.test_metrics)
"""

from ..data.batching import Collator, EncodedDataset, EpochShuffleSampler, encode_examples, encode_texts, make_loader
from ..inference.metrics import MAIN_METRIC, accuracy, compute_metrics, macro_f1, mse, pearson
from ..inference.predict import evaluate, predict
from .checkpoint import BEST_DIR, CHECKPOINT_DIR, RESULTS_FILE, Progress, restore_adapter_weights
from .config import TrainingConfig, default_learning_rate
from .interrupt import TrainingInterrupted
from .memory import PeakMemory
from .multitask import mixture_batches, train_multitask
from .report import format_table
from .report_plot import plot_results
from .result import TrainingResult
from .setup import add_task_adapter, default_pooling, task_head
from .trainer import Trainer

__all__ = [
    "BEST_DIR",
    "CHECKPOINT_DIR",
    "Collator",
    "EncodedDataset",
    "EpochShuffleSampler",
    "MAIN_METRIC",
    "PeakMemory",
    "Progress",
    "RESULTS_FILE",
    "Trainer",
    "TrainingConfig",
    "TrainingInterrupted",
    "TrainingResult",
    "accuracy",
    "add_task_adapter",
    "compute_metrics",
    "default_learning_rate",
    "default_pooling",
    "encode_examples",
    "encode_texts",
    "evaluate",
    "format_table",
    "macro_f1",
    "make_loader",
    "mixture_batches",
    "mse",
    "pearson",
    "plot_results",
    "predict",
    "restore_adapter_weights",
    "task_head",
    "train_multitask",
]
