"""Using trained adapters: predictions and metrics, several tasks in one pass, loading adapters
(one, several, from a store), and what a fusion attends to. Shared by the CLI, the trainer's
evaluation and serving."""

from .fusion import AttentionRecorder, FusionAttention, fusion_attention, prune_fusion
from .metrics import MAIN_METRIC, accuracy, compute_metrics, macro_f1, mse, pearson
from .multitask import predict_tasks
from .predict import Prediction, evaluate, head_config, predict, predict_loader, score_texts

__all__ = [
    "AttentionRecorder",
    "FusionAttention",
    "MAIN_METRIC",
    "Prediction",
    "accuracy",
    "compute_metrics",
    "evaluate",
    "fusion_attention",
    "head_config",
    "macro_f1",
    "mse",
    "pearson",
    "predict",
    "predict_loader",
    "predict_tasks",
    "prune_fusion",
    "score_texts",
]
