"""Standard training: the undefended baseline for every modality (and the `none` backdoor row)."""
from benchmark.defended import ClassifierModel
from benchmark.registry import register_defense
from benchmark.train import TRAIN_DEFAULTS, fit


@register_defense("vanilla", modality="any", backdoor=True)
class Vanilla:
    defaults = dict(TRAIN_DEFAULTS)

    def build(self, task, model_spec, config, context):
        module = context.build_model(model_spec, task)
        module = context.trained(module, lambda m: fit(
            m, task.train.xs, task.train.ys, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], weight_decay=config["weight_decay"],
            seed=context.seed, description=f"vanilla {task.name}"))
        return ClassifierModel(module, task.num_classes)
