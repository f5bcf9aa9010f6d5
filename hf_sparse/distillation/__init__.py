"""Knowledge distillation from dense teachers: losses, layer mapping, students, the teacher-output cache and the
Distiller that runs it all inside the stock Trainer (through :class:`~hf_sparse.DistillationCallback`)."""

from .apply import Distiller
from .cache import TeacherCache, example_keys, teacher_fingerprint
from .config import DistillationConfig
from .losses import attention_loss, combine_losses, embedding_loss, hidden_state_loss, kd_loss
from .students import auto_layer_map, freeze_teacher, layer_map_for, student_from_teacher, teacher_snapshot

__all__ = [
    "DistillationConfig",
    "Distiller",
    "TeacherCache",
    "attention_loss",
    "auto_layer_map",
    "combine_losses",
    "embedding_loss",
    "example_keys",
    "freeze_teacher",
    "hidden_state_loss",
    "kd_loss",
    "layer_map_for",
    "student_from_teacher",
    "teacher_fingerprint",
    "teacher_snapshot",
]
