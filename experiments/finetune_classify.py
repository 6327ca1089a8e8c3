"""Fine-tune a pretrained jaxgpt run to classify texts.

    python run.py --config=experiments/finetune_classify.py --workdir=runs/classify \
        --config.finetune.base_workdir=runs/default \
        --config.finetune.train_path=reviews.csv [--config.finetune.trainable=head|last_k|all|lora]
    python run.py --config=experiments/finetune_classify.py --workdir=runs/classify \
        --config.finetune.base_workdir=runs/default --mode=predict --input_file=new.txt

A head on the last real token's final state; the data hold a text and a label column (CSV,
TSV, JSONL or JSON). Reports accuracy and per-class precision, recall and F1 on each
split, and writes confusion matrices as PNG.
"""

from configs import base, finetune


def get_config(arg=None):
  base.no_argument(arg, 'experiments/finetune_classify.py')
  c = finetune.get_config('classify')
  c.train.batch_size = 16
  c.lock()
  return c
