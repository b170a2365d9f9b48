"""plasticlm export-hf CHECKPOINT OUT"""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Write a plasticlm checkpoint as a Hugging Face transformers folder (save_pretrained: safetensors,
config.json, tokenizer.json as a PreTrainedTokenizerFast). Needs `pip install 'plasticlm[hf]'`.

Load it with `import plasticlm.hf` then `AutoModelForCausalLM.from_pretrained(OUT)`, or in a
process that does not import plasticlm (the lm_eval command line) with trust_remote_code=True.
The folder loads back into plasticlm too: `plasticlm generate OUT ...`, `plasticlm eval OUT ...`.

example:
  plasticlm export-hf runs/tiny runs/tiny-hf
  lm_eval --model hf --model_args pretrained=runs/tiny-hf,trust_remote_code=True --tasks wikitext
"""


def register(sub) -> None:
    p = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face transformers folder",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint directory of arch plasticlm")
    p.add_argument("out", help="the folder to write (new, or empty)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from ..hf import export_hf
    except ImportError as e:
        raise ValueError(str(e)) from None
    out = export_hf(args.checkpoint, args.out)
    print(f"wrote {out}: load with AutoModelForCausalLM.from_pretrained({str(out)!r}) after `import plasticlm.hf`")
    return 0
