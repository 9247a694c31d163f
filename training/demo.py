"""The built-in demo: procedural data written by our writer, the real training loop, the real metrics.

`python train.py --recipe=demo` generates (once) data/demo.py's shapes-and-colours set in
`{model_dir}/data`, trains the `demo` recipe on it (the reference loss, optimizer and schedule shape), then
evaluates the final model on the validation split and prints its F1@k next to the baseline of always
predicting the most frequent training classes, so that one can see that it learned. The comparison is
also written to `{model_dir}/demo_report.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from absl import logging

from data import demo as demo_data
from training import distributed, loop
from training.config import TrainConfig


def prepare(config: TrainConfig, dist: distributed.Distributed) -> TrainConfig:
    """Generates the demo set (the chief; the others wait) and points the config at it."""
    data_dir = config.data.data_dir or os.path.join(config.model_dir, "data")
    if dist.is_chief:
        dataset = demo_data.make_demo_dataset(data_dir)
    dist.barrier()  # Horovod: the data exist before any rank reads them.
    if not dist.is_chief:
        dataset = demo_data.make_demo_dataset(data_dir)  # finds the finished set and returns it
    return dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, num_classes=dataset.num_classes),
        data=dataclasses.replace(config.data, data_dir=dataset.data_dir),
    )


def report(config: TrainConfig, result: dict[str, Any]) -> dict[str, Any]:
    """The final validation metrics next to the most-frequent-classes baseline."""
    baseline = demo_data.most_frequent_baseline(config.data.data_dir, topk=config.topk)
    rows = {}
    for k in config.topk:
        rows[f"f1@{k}"] = {"model": result["eval"][f"f1@{k}"], "most_frequent": baseline[f"f1@{k}"]}
    rows["mAP"] = {"model": result["eval"]["mAP"], "most_frequent": baseline["mAP"]}
    return {"steps": result["step"], "final_loss": result.get("loss"), "validation": rows}


def format_report(summary: dict[str, Any]) -> str:
    lines = [f"demo after {summary['steps']} steps — validation metrics (model vs most-frequent baseline):"]
    for name, row in summary["validation"].items():
        lines.append(f"  {name:>6}: model {row['model']:.3f}   most frequent {row['most_frequent']:.3f}")
    return "\n".join(lines)


def run(config: TrainConfig, *, dist: distributed.Distributed) -> dict[str, Any]:
    """Data, training, final evaluation and the comparison with the baseline."""
    config = prepare(config, dist)
    result = loop.train(config, dist=dist)  # ends with an evaluation (also when already finished)
    summary = report(config, result)
    if dist.is_chief:
        with open(os.path.join(config.model_dir, "demo_report.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        logging.info("wrote %s", os.path.join(config.model_dir, "demo_report.json"))
        print(format_report(summary))
    return summary
